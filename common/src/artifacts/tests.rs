//! Unit tests of the artifact store facade (the local directory has its own).

use super::*;

const NO_LIMITS: FetchLimits = FetchLimits {
    max_references: 16,
    max_bytes: u64::MAX,
};

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
    store.resolve_inputs(&mut inputs, &NO_LIMITS).await.unwrap();
    assert_eq!(inputs["again"], Value::Binary(vec![7; 5000]));
    assert!(matches!(
        store.get("art_missing").await,
        Err(ArtifactError::NotFound(_))
    ));
}

fn local_store(dir: &std::path::Path) -> ArtifactStore {
    ArtifactStore::open(&crate::config::ArtifactsConfig {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    })
    .unwrap()
}

fn references(ids: &[&str]) -> ValueMap {
    let mut inputs = ValueMap::new();
    let list = ids.iter().map(|id| reference(id, 0)).collect();
    inputs.insert("files".into(), Value::Array(list));
    inputs
}

#[tokio::test]
async fn references_are_counted_and_sized_before_anything_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(&dir.path().join("store"));
    let a = store.put(vec![1; 600]).await.unwrap();
    let b = store.put(vec![2; 600]).await.unwrap();
    let limits = FetchLimits {
        max_references: 2,
        max_bytes: 1000,
    };
    let mut three = references(&[&a, &b, &a]);
    assert!(matches!(
        store.resolve_inputs(&mut three, &limits).await,
        Err(ArtifactError::TooManyReferences { count: 3, max: 2 })
    ));
    let mut two = references(&[&a, &b]);
    let error = store.resolve_inputs(&mut two, &limits).await.unwrap_err();
    assert!(
        matches!(
            error,
            ArtifactError::FetchTooLarge {
                total: 1200,
                max: 1000
            }
        ),
        "{error}"
    );
    assert!(error.is_invalid_input());
    assert_eq!(two, references(&[&a, &b]), "nothing was replaced");
    let mut one = references(&[&a]);
    store.resolve_inputs(&mut one, &limits).await.unwrap();
    assert_eq!(
        one["files"],
        Value::Array(vec![Value::Binary(vec![1; 600])])
    );
}

#[tokio::test]
async fn a_planted_symlink_is_unavailable_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("passwd");
    std::fs::write(&secret, "root:x:0:0").unwrap();
    let root = dir.path().join("store");
    let store = local_store(&root);
    std::os::unix::fs::symlink(&secret, root.join("art_planted")).unwrap();
    let mut inputs = references(&["art_planted"]);
    let error = store
        .resolve_inputs(&mut inputs, &NO_LIMITS)
        .await
        .unwrap_err();
    assert!(matches!(error, ArtifactError::Unsafe { .. }), "{error}");
    assert!(
        !error.is_invalid_input(),
        "the store's fault: artifact_unavailable"
    );
    assert!(matches!(
        store.download("art_planted").await,
        Err(ArtifactError::Unsafe { .. })
    ));
}

#[tokio::test]
async fn downloads_stream_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(&dir.path().join("store"));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let id = store.put(data.clone()).await.unwrap();
    let download = store.download(&id).await.unwrap();
    assert_eq!(download.size_bytes, data.len() as u64);
    let chunks: Vec<Bytes> = download.chunks.try_collect().await.unwrap();
    assert!(chunks.len() > 1, "read in chunks");
    assert_eq!(chunks.concat(), data);
}

#[tokio::test]
async fn expired_objects_are_deleted_from_an_object_store() {
    let store = ArtifactStore::open(&crate::config::ArtifactsConfig {
        url: "memory:///".into(),
        ..Default::default()
    })
    .unwrap();
    let id = store.put(vec![1, 2, 3]).await.unwrap();
    assert_eq!(
        store.delete_expired(Duration::from_secs(60)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.delete_expired(Duration::ZERO).await.unwrap(), 1);
    assert!(matches!(
        store.size(&id).await,
        Err(ArtifactError::NotFound(_))
    ));
}
