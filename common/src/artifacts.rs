//! Owns object_store: the artifact store for files too big to travel inline
//! (input images, output meshes), reachable from every host.
//!
//! Backends come from the URL: `file:///dir` (one host, or a shared mount) and,
//! with the `s3` feature, `s3://bucket/prefix` (many hosts). Artifacts are only
//! ever addressed by id (`art_` + letters, digits, `_`, `-`): a job input can
//! name an artifact, never a path, so no input makes a worker read or write
//! outside the store. Feature `artifacts`.

use std::sync::Arc;

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
    #[error("artifact store URL '{url}': {reason}")]
    Url { url: String, reason: String },
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
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

/// Every artifact id referenced in `inputs`, checked for syntax.
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

#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl ArtifactStore {
    /// Opens the store of `config` (`file:///abs/dir`; `s3://…` with feature `s3`,
    /// its endpoint and credentials in `config.options`). A local directory is
    /// created if missing.
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
            std::fs::create_dir_all(&dir).map_err(|e| ArtifactError::Url {
                url: url.to_owned(),
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
            return Ok(ArtifactStore {
                store: Arc::new(store),
                prefix: Path::default(),
            });
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, config.options.iter())
            .map_err(|e| ArtifactError::Url {
                url: url.to_owned(),
                reason: format!("{e} (s3:// needs gpuq built with the `s3` feature)"),
            })?;
        Ok(ArtifactStore {
            store: Arc::from(store),
            prefix,
        })
    }

    fn path(&self, id: &str) -> Result<Path, ArtifactError> {
        validate_id(id)?;
        Ok(self.prefix.clone().join(id))
    }

    /// Stores bytes under a new id.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<String, ArtifactError> {
        let id = format!("art_{}", uuid::Uuid::now_v7().simple());
        self.store
            .put(&self.path(&id)?, PutPayload::from(bytes))
            .await?;
        Ok(id)
    }

    pub async fn get(&self, id: &str) -> Result<Vec<u8>, ArtifactError> {
        let path = self.path(id)?;
        match self.store.get(&path).await {
            Ok(result) => Ok(result.bytes().await?.to_vec()),
            Err(object_store::Error::NotFound { .. }) => {
                Err(ArtifactError::NotFound(id.to_owned()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Replaces every artifact reference in `inputs` with the artifact's bytes.
    pub async fn resolve_inputs(&self, inputs: &mut ValueMap) -> Result<(), ArtifactError> {
        for value in inputs.values_mut() {
            self.resolve(value).await?;
        }
        Ok(())
    }

    fn resolve<'a>(
        &'a self,
        value: &'a mut Value,
    ) -> futures_util::future::BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            if let Some(id) = reference_id(value).map(str::to_owned) {
                *value = Value::Binary(self.get(&id).await?);
                return Ok(());
            }
            match value {
                Value::Map(entries) => {
                    for (_, v) in entries.iter_mut() {
                        self.resolve(v).await?;
                    }
                }
                Value::Array(items) => {
                    for v in items.iter_mut() {
                        self.resolve(v).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_name_paths() {
        assert!(validate_id("art_0193abc-x_y").is_ok());
        for bad in [
            "",
            "art_",
            "../etc/passwd",
            "art_../../x",
            "art_a/b",
            "art_a b",
            "other_123",
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        let mut inputs = ValueMap::new();
        inputs.insert(
            "mesh".into(),
            Value::Map(vec![(
                Value::from(ARTIFACT_KEY),
                Value::from("../../etc/passwd"),
            )]),
        );
        assert!(matches!(
            referenced_ids(&inputs),
            Err(ArtifactError::InvalidId(_))
        ));
    }

    #[tokio::test]
    async fn local_store_round_trips_and_offloads_big_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::ArtifactsConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        };
        let store = ArtifactStore::open(&config).unwrap();
        let mut outputs = ValueMap::new();
        outputs.insert("small".into(), Value::Binary(vec![1; 10]));
        outputs.insert("mesh".into(), Value::Binary(vec![7; 5000]));
        store.offload_outputs(&mut outputs, 1024).await.unwrap();
        assert_eq!(outputs["small"], Value::Binary(vec![1; 10]));
        let id = reference_id(&outputs["mesh"]).unwrap().to_owned();
        assert!(std::fs::read_dir(dir.path())
            .unwrap()
            .any(|e| e.unwrap().file_name() == id.as_str()));

        let mut inputs = ValueMap::new();
        inputs.insert("again".into(), outputs["mesh"].clone());
        assert_eq!(referenced_ids(&inputs).unwrap(), std::slice::from_ref(&id));
        store.resolve_inputs(&mut inputs).await.unwrap();
        assert_eq!(inputs["again"], Value::Binary(vec![7; 5000]));
        assert!(matches!(
            store.get("art_missing").await,
            Err(ArtifactError::NotFound(_))
        ));
    }
}
