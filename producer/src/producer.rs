//! The producer API: submit jobs, read their status, wait for them, and see the
//! whole system (hosts, workers, queue depths).
//!
//! A job's `queued` record is written to Redis *before* it is published, so a
//! worker's `processing` can never be overwritten by a late `queued`. The
//! publish is mandatory and confirmed: a job nothing can route is an error here,
//! never a silent drop.

use std::sync::Arc;
use std::time::Duration;

use gpuq_common::artifacts::{ArtifactDownload, ArtifactError, ArtifactStore};
use gpuq_common::config::Config;
use gpuq_common::job_record::scripts::Quota;
use gpuq_common::record::JobRecord;
use gpuq_common::topology::Topology;
use gpuq_common::wire::value_map_to_json_string;
use gpuq_common::{now_ms, ErrorCode, JobError, Names, ValueMap};

use crate::amqp::{BrokerError, BrokerNodes, Publisher, QueueDepth};
use crate::store::{CancelOutcome, QueuedJob, QueuedOutcome, Store, StoreError};
pub use crate::store::{EventReceiver, HubEvent, JobFilter, JobListing};
use crate::system::{QueueStatus, SystemStatus};

mod prepare;
mod publish;
mod sub_queues;

/// A job to submit. Only `feature` is required.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    pub feature: String,
    /// Pin a model of the feature; default: the feature's default model.
    pub model: Option<String>,
    pub inputs: ValueMap,
    /// Client-chosen id (the idempotency key); default: a new UUIDv7.
    pub job_id: Option<String>,
    pub priority: Option<u8>,
    pub timeout_s: Option<u64>,
    /// Longest wait in the queue, seconds; default `jobs.queue_timeout_s`.
    pub queue_timeout_s: Option<u64>,
    pub metadata: ValueMap,
    /// Name of the gateway token submitting the job (recorded as `submitted_by`).
    pub submitted_by: Option<String>,
    /// The tenant the job belongs to; default `jobs.default_tenant`.
    pub tenant: Option<String>,
    /// Where to POST the job's status changes (checked against `[webhooks]`).
    pub webhook: Option<gpuq_common::webhook::WebhookRequest>,
}

impl JobRequest {
    pub fn new(feature: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            ..Self::default()
        }
    }

    pub fn input(mut self, name: impl Into<String>, value: impl Into<gpuq_common::Value>) -> Self {
        self.inputs.insert(name.into(), value.into());
        self
    }

    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown feature '{feature}'; known features: {}", if known.is_empty() { "(none)".to_owned() } else { known.join(", ") })]
    UnknownFeature { feature: String, known: Vec<String> },
    #[error("unknown model '{model}' for feature '{feature}'; models of this feature: {}", if known.is_empty() { "(none)".to_owned() } else { known.join(", ") })]
    UnknownModel {
        model: String,
        feature: String,
        known: Vec<String>,
    },
    #[error("no queue is bound to routing key '{routing_key}' on exchange '{exchange}': unknown feature or model, or no process has declared the topology yet")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker refused the job (nack); it was not queued")]
    Refused,
    #[error("a job with id '{0}' already exists")]
    DuplicateJobId(String),
    /// The job's tenant is past `max_queued` or `rate_per_s`; nothing was
    /// written or published.
    #[error("{error}")]
    QuotaExceeded {
        /// Code `quota_exceeded`; the message names the tenant and the limit.
        error: JobError,
        /// When the rate limit refused: how long until a submit may pass.
        retry_after_ms: Option<u64>,
    },
    #[error("invalid job: {0}")]
    Invalid(JobError),
    #[error("rabbitmq: {0}")]
    Broker(#[from] BrokerError),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("rabbitmq: {0}")]
    Broker(#[from] BrokerError),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
}

pub struct Producer {
    config: Config,
    names: Names,
    /// The RabbitMQ nodes; a lost connection is replaced on the next one.
    nodes: BrokerNodes,
    /// Replaced by a fresh connection when the broker dropped the old one.
    publisher: tokio::sync::Mutex<Arc<Publisher>>,
    store: Store,
    artifacts: ArtifactStore,
    /// Sub-queues this process has declared (by queue name).
    sub_queues: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Producer {
    /// Connects to RabbitMQ and Redis. With a registry in `config`, also declares
    /// the topology, so jobs can be queued before any worker has started.
    pub async fn connect(config: Config) -> Result<Producer, ProducerError> {
        let names = config.names();
        let topology = (!config.registry().is_empty()).then(|| Topology::for_config(&config));
        let nodes = BrokerNodes::for_config(&config);
        let publisher = tokio::sync::Mutex::new(Arc::new(
            Publisher::connect(&nodes, topology.as_ref()).await?,
        ));
        let store = Store::connect(
            config.redis.target(),
            names.clone(),
            config.jobs.finished_ttl_s * 1000,
        )
        .await?;
        let artifacts = ArtifactStore::open(&config.artifacts)?;
        Ok(Producer {
            config,
            names,
            nodes,
            publisher,
            store,
            artifacts,
            sub_queues: Default::default(),
        })
    }

    /// The broker connection, reconnecting first if the broker dropped it.
    async fn publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        let mut current = self.publisher.lock().await;
        if !current.is_connected() {
            tracing::warn!("rabbitmq connection lost; reconnecting");
            self.nodes.connection_lost(current.node);
            let topology =
                (!self.config.registry().is_empty()).then(|| Topology::for_config(&self.config));
            *current = Arc::new(Publisher::connect(&self.nodes, topology.as_ref()).await?);
        }
        Ok(Arc::clone(&current))
    }

    /// Status events from now on, through the process's one shared Redis
    /// subscription; a reader that falls behind gets a gap, not a backlog.
    pub async fn subscribe_events(&self) -> Result<EventReceiver, ProducerError> {
        Ok(self.store.subscribe_events().await?)
    }

    /// Fails unless both RabbitMQ and Redis answer.
    pub async fn check_ready(&self) -> Result<(), ProducerError> {
        self.store.ping().await?;
        let dead_letters = self.names.dead_letter_queue();
        self.publisher().await?.queue_depth(&dead_letters).await?;
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The RabbitMQ nodes, and which one this process is connected to.
    pub fn broker_nodes(&self) -> &BrokerNodes {
        &self.nodes
    }

    /// Queues a job and returns its id once the broker has confirmed it.
    pub async fn submit(&self, request: JobRequest) -> Result<String, SubmitError> {
        self.submit_many(vec![request])
            .await
            .pop()
            .expect("one result per request")
    }

    /// Queues many jobs at once: one pipelined Redis round trip for their records,
    /// then every publish before awaiting the confirms together. Returns one
    /// result per request, in order.
    pub async fn submit_many(&self, requests: Vec<JobRequest>) -> Vec<Result<String, SubmitError>> {
        let created_ms = now_ms();
        let mut results: Vec<Result<String, SubmitError>> = Vec::with_capacity(requests.len());
        let mut prepared = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            match self.prepare(request, created_ms) {
                Ok(job) => {
                    results.push(Ok(job.message.job_id.clone()));
                    prepared.push((index, job));
                }
                Err(error) => results.push(Err(error)),
            }
        }
        // Connect (or reconnect) before writing anything, so a broker outage
        // leaves no record behind.
        let publisher = match self.publisher().await {
            Ok(publisher) => publisher,
            Err(error) => {
                for (index, _) in &prepared {
                    results[*index] = Err(SubmitError::Broker(error.clone()));
                }
                return results;
            }
        };
        if let Err(error) = self.declare_sub_queues(&publisher, &mut prepared).await {
            for (index, _) in &prepared {
                results[*index] = Err(error.for_each_job());
            }
            return results;
        }
        let queued: Vec<QueuedJob<'_>> = prepared
            .iter()
            .map(|(_, job)| QueuedJob {
                job_id: &job.message.job_id,
                feature: &job.message.feature,
                model: job.message.model.as_deref(),
                created_ms,
                metadata_json: (!job.message.metadata.is_empty())
                    .then(|| value_map_to_json_string(&job.message.metadata)),
                inputs_json: job.inputs_json.as_deref(),
                submitted_by: job.message.submitted_by.as_deref(),
                tenant: job.message.tenant.as_deref(),
                quota: job.message.tenant.as_deref().map_or(Quota::NONE, |tenant| {
                    Quota::of(&self.config.tenants.limits(tenant))
                }),
                priority: job.message.priority,
                priority_lowered_from: job.priority_lowered_from,
            })
            .collect();
        let written = match self.store.write_queued(&queued).await {
            Ok(written) => written,
            Err(error) => {
                for (index, _) in &prepared {
                    results[*index] = Err(SubmitError::Store(error.clone()));
                }
                return results;
            }
        };
        drop(queued);
        let mut fresh_jobs = Vec::with_capacity(prepared.len());
        for ((index, job), outcome) in prepared.into_iter().zip(written) {
            results[index] = match outcome {
                QueuedOutcome::Written => {
                    fresh_jobs.push((index, job));
                    continue;
                }
                QueuedOutcome::Exists => Err(SubmitError::DuplicateJobId(job.message.job_id)),
                QueuedOutcome::QuotaExceeded {
                    reason,
                    retry_after_ms,
                } => Err(SubmitError::QuotaExceeded {
                    error: JobError::new(ErrorCode::QuotaExceeded, reason),
                    retry_after_ms,
                }),
            };
        }
        self.publish_all(&publisher, fresh_jobs, &mut results).await;
        results
    }

    /// Stores a file in the artifact store; returns its id.
    pub async fn put_artifact(&self, bytes: Vec<u8>) -> Result<String, ProducerError> {
        Ok(self.artifacts.put(bytes).await?)
    }

    /// Records that gateway token `owner` owns artifact `id`: a `submit` token
    /// downloads only the artifacts it owns. Expires with the artifact (`artifacts.ttl_s`).
    pub async fn set_artifact_owner(&self, id: &str, owner: &str) -> Result<(), ProducerError> {
        let ttl_s = self.config.artifacts.ttl().as_secs();
        Ok(self.store.set_artifact_owner(id, owner, ttl_s).await?)
    }

    /// The gateway token name that owns artifact `id`, if recorded.
    pub async fn artifact_owner(&self, id: &str) -> Result<Option<String>, ProducerError> {
        Ok(self.store.artifact_owner(id).await?)
    }

    /// Reads an artifact (e.g. a mesh a job returned by reference).
    /// Streamed from the store: the file is never held whole in memory.
    pub async fn get_artifact(&self, id: &str) -> Result<ArtifactDownload, ProducerError> {
        Ok(self.artifacts.download(id).await?)
    }

    /// A job input from file bytes: inline when small, else stored and referenced.
    pub async fn file_input(&self, bytes: Vec<u8>) -> Result<gpuq_common::Value, ProducerError> {
        if bytes.len() as u64 <= self.config.artifacts.inline_max_bytes {
            return Ok(gpuq_common::Value::Binary(bytes));
        }
        let size = bytes.len();
        let id = self.put_artifact(bytes).await?;
        Ok(gpuq_common::artifacts::reference(&id, size))
    }

    /// Cancels a job: a queued one never runs, a running one is stopped.
    pub async fn cancel(&self, job_id: &str) -> Result<CancelOutcome, ProducerError> {
        Ok(self
            .store
            .cancel(job_id, self.config.jobs.finished_ttl_s, now_ms())
            .await?)
    }

    /// The most recent jobs, newest first (jobs submitted through gpuq, and those
    /// other clients published once a worker saw them).
    /// The most recent jobs matching `filter`, newest first, without their
    /// results; bounded work per call (see `Store::list_jobs`).
    pub async fn recent_jobs(
        &self,
        limit: usize,
        filter: &JobFilter,
    ) -> Result<JobListing, ProducerError> {
        Ok(self.store.list_jobs(filter, limit).await?)
    }

    /// The job's record, or `None` if unknown or expired.
    pub async fn status(&self, job_id: &str) -> Result<Option<JobRecord>, ProducerError> {
        Ok(self.store.job(job_id).await?)
    }

    /// Waits until the job is final or `timeout` passes; returns the last record.
    pub async fn wait(
        &self,
        job_id: &str,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, ProducerError> {
        Ok(self.store.wait_final(job_id, timeout).await?)
    }

    /// Messages waiting and consumers of a model's queue; `None` if the queue does not exist.
    pub async fn queue_depth(&self, model_id: &str) -> Result<Option<QueueDepth>, ProducerError> {
        Ok(self
            .publisher()
            .await?
            .queue_depth(&self.names.model_queue(model_id))
            .await?)
    }

    /// Hosts, workers and the queue of every registered model.
    pub async fn system_status(&self) -> Result<SystemStatus, ProducerError> {
        let hosts = self.store.hosts().await?;
        let workers = self.store.workers().await?;
        let mut queues = Vec::new();
        for model in self.config.registry().models() {
            let queue = self.names.model_queue(&model.id);
            let depth = self.publisher().await?.queue_depth(&queue).await?;
            queues.push(QueueStatus {
                model: model.id.clone(),
                feature: model.feature.clone(),
                queue,
                vram_mib: model.vram_mib,
                messages: depth.as_ref().map(|d| d.messages),
                consumers: depth.as_ref().map(|d| d.consumers),
                sub_queues: self.sub_queue_depths(&model.id).await?,
            });
        }
        let dead_letter_queue = self.names.dead_letter_queue();
        let dead_letters = self
            .publisher()
            .await?
            .queue_depth(&dead_letter_queue)
            .await?
            .map(|d| d.messages);
        // Only with webhooks on: a passive declare of a missing queue closes
        // a channel (and lapin logs it) on every call.
        let webhook_dead_letters = if self.config.webhooks.enabled() {
            self.publisher()
                .await?
                .queue_depth(&self.names.webhooks_dead_queue())
                .await?
                .map(|d| d.messages)
        } else {
            None
        };
        let learned = self.store.learned_vram().await?;
        Ok(SystemStatus {
            hosts,
            workers,
            queues,
            dead_letters,
            webhook_dead_letters,
            vram: crate::system::vram::statuses(&self.config, &learned),
        })
    }

    pub async fn close(&self) {
        self.publisher.lock().await.close().await;
    }
}
