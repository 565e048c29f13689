"""Submit a gpuq job from Python with nothing but pika, and wait for its reply.

    pip install pika
    python3 docs/examples/pika_submit.py [namespace]

Publishes a JSON job to the `<namespace>.jobs` exchange with routing key `echo`
(the feature), asks for the result on RabbitMQ's direct reply-to pseudo-queue,
prints the reply, and exits non-zero unless the job completed.
Then read its record with: redis-cli HGETALL <namespace>:job:<job id>
"""

import json
import os
import sys
import uuid

import pika

namespace = sys.argv[1] if len(sys.argv) > 1 else "gpuq"
url = os.environ.get("GPUQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()  # publisher confirms: an unroutable job raises here

replies = []


def on_reply(ch, method, properties, body):
    replies.append((properties.correlation_id, json.loads(body)))
    ch.stop_consuming()


# Direct reply-to: consume before publishing, with auto-ack.
channel.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)

job_id = str(uuid.uuid4())
job = {
    "schema_version": 1,
    "job_id": job_id,
    "feature": "echo",
    "inputs": {"prompt": "a wooden chair", "seed": 7},
    "metadata": {"client": "pika-example"},
}
channel.basic_publish(
    exchange=f"{namespace}.jobs",
    routing_key="echo",
    body=json.dumps(job),
    properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=job_id,
        reply_to="amq.rabbitmq.reply-to",
        correlation_id=job_id,
    ),
    mandatory=True,
)
print(f"submitted {job_id}", flush=True)

connection.call_later(60, channel.stop_consuming)  # bounded wait
channel.start_consuming()
connection.close()

if not replies:
    sys.exit("no reply within 60 s")
correlation_id, reply = replies[0]
print(json.dumps(reply, sort_keys=True))
sys.exit(0 if correlation_id == job_id and reply["status"] == "completed" else 1)
