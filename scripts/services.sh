#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are reachable,
# installing (Debian) and starting whichever is not. Idempotent.
set -euo pipefail

reachable() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_for() { # name host port seconds
  local deadline=$((SECONDS + $4))
  until reachable "$2" "$3"; do
    if ((SECONDS > deadline)); then
      echo "services: $1 did not come up on $2:$3 within $4 s" >&2
      return 1
    fi
    sleep 1
  done
}

install_if_missing() { # command package
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "services: installing $2"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}

if reachable 127.0.0.1 6379; then
  echo "services: redis is up"
else
  install_if_missing redis-server redis-server
  echo "services: starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
  wait_for redis 127.0.0.1 6379 30
fi

if reachable 127.0.0.1 5672; then
  echo "services: rabbitmq is up"
else
  install_if_missing rabbitmq-server rabbitmq-server
  echo "services: starting rabbitmq"
  rabbitmq-server -detached
  wait_for rabbitmq 127.0.0.1 5672 120
fi
