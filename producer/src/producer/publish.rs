//! The publish half of a submit: every job's publish sent before any confirm
//! is awaited, then the confirms settled. A publish whose connection was lost
//! before its confirm (a node stopped, a failover) is re-sent on the next
//! node: the job id is the idempotency key, so a job that had reached the
//! broker before the loss and is now queued twice completes once (a second
//! delivery after the first ended finds the record final; one during the
//! first run may start it again, its outcome still recorded once). A
//! confirm that never comes within `amqp.publish_timeout_ms`, re-sends
//! included, is an error to the caller and the job is recorded failed, so a
//! late delivery of it does not run either.

use tokio::time::Instant;

use gpuq_common::{now_ms, ErrorCode, JobError};

use super::prepare::PreparedJob;
use super::{Producer, SubmitError};
use crate::amqp::{BrokerError, PublishOutcome, Publisher, StartedPublish};

/// A job whose publish was sent: what a re-send needs, and the confirm to await.
pub(super) struct PendingPublish {
    index: usize,
    job: PreparedJob,
    started: StartedPublish,
}

impl Producer {
    /// Publishes the jobs (their records are written) and settles every
    /// confirm into `results`.
    pub(super) async fn publish_all(
        &self,
        publisher: &Publisher,
        jobs: Vec<(usize, PreparedJob)>,
        results: &mut [Result<String, SubmitError>],
    ) {
        let mut pending = Vec::with_capacity(jobs.len());
        for (index, job) in jobs {
            let started = start(publisher, &job).await;
            pending.push(PendingPublish {
                index,
                job,
                started,
            });
        }
        let deadline = Instant::now() + self.config.amqp.publish_timeout();
        loop {
            let lost = self.settle(pending, results, deadline).await;
            if lost.is_empty() {
                return;
            }
            // Failover: a new connection on the next node, then the re-sends.
            let publisher = match tokio::time::timeout_at(deadline, self.publisher()).await {
                Ok(Ok(publisher)) => publisher,
                Ok(Err(error)) => return self.fail_all(lost, error, results).await,
                Err(_) => return self.fail_all(lost, self.confirm_timeout(), results).await,
            };
            tracing::warn!(
                jobs = lost.len(),
                "rabbitmq connection lost before the confirms; re-sending on the new connection"
            );
            pending = Vec::with_capacity(lost.len());
            for (index, job) in lost {
                let started = start(&publisher, &job).await;
                pending.push(PendingPublish {
                    index,
                    job,
                    started,
                });
            }
        }
    }

    /// Awaits each confirm until `deadline`: a nack or an unroutable job is
    /// recorded `failed`; the jobs whose connection was lost are returned
    /// for a re-send.
    async fn settle(
        &self,
        pending: Vec<PendingPublish>,
        results: &mut [Result<String, SubmitError>],
        deadline: Instant,
    ) -> Vec<(usize, PreparedJob)> {
        let mut lost = Vec::new();
        for PendingPublish {
            index,
            job,
            started,
        } in pending
        {
            let job_id = &job.message.job_id;
            let outcome = tokio::time::timeout_at(deadline, Publisher::outcome(started)).await;
            let error = match outcome {
                Ok(Ok(PublishOutcome::Queued)) => continue,
                Ok(Ok(PublishOutcome::Unroutable)) => {
                    // A sub-queue deleted behind this process's back: declared again next time.
                    if let Some(target) = &job.sub_queue {
                        self.forget_sub_queue(target);
                    }
                    let error = SubmitError::Unroutable {
                        exchange: job.exchange.clone(),
                        routing_key: job.routing_key.clone(),
                    };
                    self.record_failure(job_id, ErrorCode::Unroutable, &error)
                        .await;
                    error
                }
                Ok(Ok(PublishOutcome::Refused)) => {
                    self.record_failure(job_id, ErrorCode::Unroutable, &SubmitError::Refused)
                        .await;
                    SubmitError::Refused
                }
                Ok(Err(error)) if error.is_connection_lost() => {
                    lost.push((index, job));
                    continue;
                }
                Ok(Err(error)) => {
                    // Never reached the broker: the job does not exist.
                    let _ = self.store.delete_job(job_id).await;
                    error.into()
                }
                Err(_) => {
                    let error = SubmitError::Broker(self.confirm_timeout());
                    self.record_failure(job_id, ErrorCode::Timeout, &error)
                        .await;
                    error
                }
            };
            results[index] = Err(error);
        }
        lost
    }

    /// No node took the re-sends in time: each job is recorded failed (it
    /// may have reached the lost node, so a late delivery must not run it).
    async fn fail_all(
        &self,
        lost: Vec<(usize, PreparedJob)>,
        error: BrokerError,
        results: &mut [Result<String, SubmitError>],
    ) {
        for (index, job) in lost {
            let error = SubmitError::Broker(error.clone());
            self.record_failure(&job.message.job_id, ErrorCode::Timeout, &error)
                .await;
            results[index] = Err(error);
        }
    }

    fn confirm_timeout(&self) -> BrokerError {
        BrokerError::ConfirmTimeout {
            timeout_ms: self.config.amqp.publish_timeout_ms,
        }
    }

    pub(super) async fn record_failure(&self, job_id: &str, code: ErrorCode, error: &SubmitError) {
        let job_error = JobError::new(code, error.to_string());
        if let Err(store_error) = self
            .store
            .mark_failed(
                job_id,
                &job_error,
                self.config.jobs.finished_ttl_s,
                now_ms(),
            )
            .await
        {
            tracing::warn!(error = %store_error, job_id, "failure not recorded in redis");
        }
    }
}

async fn start(publisher: &Publisher, job: &PreparedJob) -> StartedPublish {
    publisher
        .start_publish(
            &job.exchange,
            &job.routing_key,
            &job.body,
            job.properties.clone(),
        )
        .await
}
