//! Owns object_store: the artifact store for files too big to travel inline
//! (input images, output meshes), reachable from every host.
//!
//! Backends come from the URL: `file:///dir` (one host, or a shared mount; see
//! `local`, which writes it with our own modes and never follows a symlink)
//! and, with the `s3` feature, `s3://bucket/prefix` (many hosts). Artifacts are
//! only ever addressed by id (`art_` + letters, digits, `_`, `-`): a job input
//! can name an artifact, never a path, so no input makes a worker read or write
//! outside the store. A job's references are bounded ([`FetchLimits`]: how many,
//! and how many bytes in all, checked with `head` before anything is fetched),
//! and artifacts live `artifacts.ttl_s` ([`ArtifactStore::delete_expired`]).
//! Feature `artifacts`.

mod local;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::wire::{Value, ValueMap};

/// JSON/msgpack marker of an artifact reference: `{"$artifact": "<id>"}`.
pub const ARTIFACT_KEY: &str = "$artifact";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid artifact id '{0}': ids are 'art_' followed by 1 to 100 letters, digits, '_' or '-'")]
    InvalidId(String),
    #[error("artifact '{0}' not found")]
    NotFound(String),
    /// The job names more artifacts than `jobs.max_artifact_refs`.
    #[error("the inputs reference {count} artifacts; the limit (jobs.max_artifact_refs) is {max}")]
    TooManyReferences { count: usize, max: usize },
    /// The job's artifacts add up to more than `artifacts.max_fetch_bytes`.
    #[error("the referenced artifacts total {total} bytes; the limit (artifacts.max_fetch_bytes) is {max}; nothing was fetched")]
    FetchTooLarge { total: u64, max: u64 },
    #[error("artifact store URL '{url}': {reason}")]
    Url { url: String, reason: String },
    /// The local store directory, or an entry in it, is not safe to use (a
    /// symlink, another user's directory, writable by everyone).
    #[error("artifact store path {path} refused: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("artifact store file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
}

impl ArtifactError {
    /// Whether the job is at fault (a bad or missing reference, over a limit),
    /// so the error is `invalid_input` and never retried; anything else is the
    /// store's (`artifact_unavailable`).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            ArtifactError::InvalidId(_)
                | ArtifactError::NotFound(_)
                | ArtifactError::TooManyReferences { .. }
                | ArtifactError::FetchTooLarge { .. }
        )
    }
}

/// How much of the store one job may fetch (`jobs.max_artifact_refs`,
/// `artifacts.max_fetch_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    pub max_references: usize,
    pub max_bytes: u64,
}

impl FetchLimits {
    pub fn from_config(config: &crate::config::Config) -> FetchLimits {
        FetchLimits {
            max_references: config.jobs.max_artifact_refs,
            max_bytes: config.artifacts.max_fetch_bytes,
        }
    }
}

/// Checks an artifact id; the only way inputs name stored files.
pub fn validate_id(id: &str) -> Result<(), ArtifactError> {
    let rest = id.strip_prefix("art_").unwrap_or("");
    let ok = !rest.is_empty()
        && rest.len() <= 100
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::InvalidId(id.to_owned()))
    }
}

/// The id named by an artifact reference, if `value` is one.
pub fn reference_id(value: &Value) -> Option<&str> {
    match value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(ARTIFACT_KEY))
            .and_then(|(_, v)| v.as_str()),
        _ => None,
    }
}

/// A reference to a stored artifact of `size` bytes.
pub fn reference(id: &str, size: usize) -> Value {
    Value::Map(vec![
        (Value::from(ARTIFACT_KEY), Value::from(id)),
        (Value::from("size_bytes"), Value::from(size as u64)),
    ])
}

/// Every artifact id referenced in `inputs` (once per reference), checked for syntax.
pub fn referenced_ids(inputs: &ValueMap) -> Result<Vec<String>, ArtifactError> {
    fn walk(value: &Value, out: &mut Vec<String>) -> Result<(), ArtifactError> {
        if let Some(id) = reference_id(value) {
            validate_id(id)?;
            out.push(id.to_owned());
            return Ok(());
        }
        match value {
            Value::Map(entries) => entries.iter().try_for_each(|(_, v)| walk(v, out)),
            Value::Array(items) => items.iter().try_for_each(|v| walk(v, out)),
            _ => Ok(()),
        }
    }
    let mut ids = Vec::new();
    inputs.values().try_for_each(|v| walk(v, &mut ids))?;
    Ok(ids)
}

/// Refuses more than `limits.max_references` references: no IO, so a
/// producer or a worker can check it before anything else.
pub fn check_reference_count(
    inputs: &ValueMap,
    limits: &FetchLimits,
) -> Result<Vec<String>, ArtifactError> {
    let ids = referenced_ids(inputs)?;
    if ids.len() > limits.max_references {
        return Err(ArtifactError::TooManyReferences {
            count: ids.len(),
            max: limits.max_references,
        });
    }
    Ok(ids)
}

/// An artifact's size and its bytes, read from the store as they are consumed.
pub struct ArtifactDownload {
    pub size_bytes: u64,
    pub chunks: BoxStream<'static, Result<Bytes, ArtifactError>>,
}

#[derive(Clone)]
enum Backend {
    Local(local::LocalDir),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    },
}

#[derive(Clone)]
pub struct ArtifactStore {
    backend: Backend,
}

impl ArtifactStore {
    /// Opens the store of `config` (`file:///abs/dir`; `s3://…` with feature `s3`,
    /// its endpoint and credentials in `config.options`). A local directory is
    /// created (mode 0700) if missing, and refused if it is a symlink, another
    /// user's, or writable by everyone.
    pub fn open(config: &crate::config::ArtifactsConfig) -> Result<ArtifactStore, ArtifactError> {
        let url = config.url.as_str();
        let parsed = url::Url::parse(url).map_err(|e| ArtifactError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|_| ArtifactError::Url {
                url: url.to_owned(),
                reason: "not an absolute local path".into(),
            })?;
            return Ok(ArtifactStore {
                backend: Backend::Local(local::LocalDir::open(dir)?),
            });
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, config.options.iter())
            .map_err(|e| ArtifactError::Url {
                url: url.to_owned(),
                reason: format!("{e} (s3:// needs gpuq built with the `s3` feature)"),
            })?;
        Ok(ArtifactStore {
            backend: Backend::Object {
                store: Arc::from(store),
                prefix,
            },
        })
    }

    /// Stores bytes under a new id.
    pub async fn put(&self, bytes: impl Into<Bytes>) -> Result<String, ArtifactError> {
        let id = format!("art_{}", uuid::Uuid::now_v7().simple());
        match &self.backend {
            Backend::Local(dir) => dir.put(id.clone(), bytes.into()).await?,
            Backend::Object { store, prefix } => {
                store
                    .put(&object_path(prefix, &id)?, PutPayload::from(bytes.into()))
                    .await?;
            }
        }
        Ok(id)
    }

    /// The whole of an artifact, in memory.
    pub async fn get(&self, id: &str) -> Result<Vec<u8>, ArtifactError> {
        match &self.backend {
            Backend::Local(dir) => dir.get(id).await,
            Backend::Object { store, prefix } => {
                let result = store
                    .get(&object_path(prefix, id)?)
                    .await
                    .map_err(|e| not_found_as(e, id))?;
                Ok(result.bytes().await?.to_vec())
            }
        }
    }

    /// An artifact's size, bytes, without reading it (`head`).
    pub async fn size(&self, id: &str) -> Result<u64, ArtifactError> {
        match &self.backend {
            Backend::Local(dir) => dir.size(id).await,
            Backend::Object { store, prefix } => Ok(store
                .head(&object_path(prefix, id)?)
                .await
                .map_err(|e| not_found_as(e, id))?
                .size),
        }
    }

    /// An artifact as a stream of chunks: a download never holds the whole
    /// file in memory.
    pub async fn download(&self, id: &str) -> Result<ArtifactDownload, ArtifactError> {
        match &self.backend {
            Backend::Local(dir) => {
                let (size_bytes, chunks) = dir.stream(id).await?;
                Ok(ArtifactDownload { size_bytes, chunks })
            }
            Backend::Object { store, prefix } => {
                let result = store
                    .get(&object_path(prefix, id)?)
                    .await
                    .map_err(|e| not_found_as(e, id))?;
                Ok(ArtifactDownload {
                    size_bytes: result.meta.size,
                    chunks: result.into_stream().map_err(ArtifactError::from).boxed(),
                })
            }
        }
    }

    /// Deletes every artifact last written more than `ttl` ago; returns how
    /// many went. Idempotent: any number of dispatchers may sweep at once.
    pub async fn delete_expired(&self, ttl: Duration) -> Result<u64, ArtifactError> {
        let cutoff = SystemTime::now()
            .checked_sub(ttl)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match &self.backend {
            Backend::Local(dir) => dir.delete_older_than(cutoff).await,
            Backend::Object { store, prefix } => {
                let cutoff_ms = cutoff
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                let listing = if prefix.as_ref().is_empty() {
                    store.list(None)
                } else {
                    store.list(Some(prefix))
                };
                let expired: Vec<Path> = listing
                    .try_filter_map(|meta| {
                        let ours = meta
                            .location
                            .filename()
                            .is_some_and(|name| validate_id(name).is_ok());
                        let old = meta.last_modified.timestamp_millis() < cutoff_ms;
                        std::future::ready(Ok((ours && old).then_some(meta.location)))
                    })
                    .try_collect()
                    .await?;
                let mut deleted = 0;
                for path in expired {
                    match store.delete(&path).await {
                        Ok(()) => deleted += 1,
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                Ok(deleted)
            }
        }
    }

    /// Replaces every artifact reference in `inputs` with the artifact's bytes.
    /// The references are counted and their sizes summed (`head`) before
    /// anything is fetched, against `limits`.
    pub async fn resolve_inputs(
        &self,
        inputs: &mut ValueMap,
        limits: &FetchLimits,
    ) -> Result<(), ArtifactError> {
        let ids = check_reference_count(inputs, limits)?;
        let mut total: u64 = 0;
        for id in &ids {
            total = total.saturating_add(self.size(id).await?);
        }
        if total > limits.max_bytes {
            return Err(ArtifactError::FetchTooLarge {
                total,
                max: limits.max_bytes,
            });
        }
        let mut budget = limits.max_bytes;
        for value in inputs.values_mut() {
            self.resolve(value, &mut budget).await?;
        }
        Ok(())
    }

    fn resolve<'a>(
        &'a self,
        value: &'a mut Value,
        budget: &'a mut u64,
    ) -> futures_util::future::BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            if let Some(id) = reference_id(value).map(str::to_owned) {
                let bytes = self.get(&id).await?;
                // An artifact that grew after its `head` still cannot pass the cap.
                *budget =
                    budget
                        .checked_sub(bytes.len() as u64)
                        .ok_or(ArtifactError::FetchTooLarge {
                            total: bytes.len() as u64,
                            max: *budget,
                        })?;
                *value = Value::Binary(bytes);
                return Ok(());
            }
            match value {
                Value::Map(entries) => {
                    for (_, v) in entries.iter_mut() {
                        self.resolve(v, budget).await?;
                    }
                }
                Value::Array(items) => {
                    for v in items.iter_mut() {
                        self.resolve(v, budget).await?;
                    }
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// Moves every byte string over `inline_max_bytes` in `outputs` to the store,
    /// leaving a reference in its place.
    pub async fn offload_outputs(
        &self,
        outputs: &mut ValueMap,
        inline_max_bytes: u64,
    ) -> Result<(), ArtifactError> {
        for value in outputs.values_mut() {
            self.offload(value, inline_max_bytes).await?;
        }
        Ok(())
    }

    fn offload<'a>(
        &'a self,
        value: &'a mut Value,
        limit: u64,
    ) -> futures_util::future::BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            match value {
                Value::Binary(bytes) if bytes.len() as u64 > limit => {
                    let size = bytes.len();
                    let id = self.put(std::mem::take(bytes)).await?;
                    *value = reference(&id, size);
                }
                Value::Map(entries) => {
                    for (_, v) in entries.iter_mut() {
                        self.offload(v, limit).await?;
                    }
                }
                Value::Array(items) => {
                    for v in items.iter_mut() {
                        self.offload(v, limit).await?;
                    }
                }
                _ => {}
            }
            Ok(())
        })
    }
}

/// The object path of `id` under the store's prefix.
fn object_path(prefix: &Path, id: &str) -> Result<Path, ArtifactError> {
    validate_id(id)?;
    Ok(prefix.clone().join(id))
}

/// object_store's not-found as ours, naming the id.
fn not_found_as(error: object_store::Error, id: &str) -> ArtifactError {
    match error {
        object_store::Error::NotFound { .. } => ArtifactError::NotFound(id.to_owned()),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests;
