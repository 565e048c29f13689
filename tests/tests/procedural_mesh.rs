//! The example adapter's `procedural_mesh` model (a procedural stand-in, not
//! a generative model) through the whole path: a job's GLB comes back through
//! the artifact store, valid and byte-identical for the same prompt and seed.
//! Its Python unit tests run here too, so the test command covers them.
//!
//! The model needs numpy and trimesh, so the adapter runs under the project's
//! `.venv/bin/python` (scripts/python-env.sh), not the `python3` that
//! `ConfigBuilder::adapter` uses for the toy model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::{result, submit, WAIT};
use gpuq_integration_tests::TestSystem;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn venv_python() -> PathBuf {
    let python = repository_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/python-env.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// Checks the GLB header (magic, version 2, length) and returns its JSON chunk.
fn glb_json(glb: &[u8]) -> serde_json::Value {
    let word = |at: usize| u32::from_le_bytes(glb[at..at + 4].try_into().unwrap()) as usize;
    assert!(glb.len() > 20, "{} bytes is no GLB", glb.len());
    assert_eq!(&glb[0..4], b"glTF");
    assert_eq!(word(4), 2, "glTF version");
    assert_eq!(word(8), glb.len(), "the header's length");
    assert_eq!(&glb[16..20], b"JSON", "the first chunk's type");
    serde_json::from_slice(&glb[20..20 + word(12)]).unwrap()
}

/// The bytes of the job's `mesh` output, fetched from the artifact store.
fn fetch_mesh(system: &TestSystem, record: &HashMap<String, String>) -> Vec<u8> {
    assert_eq!(record["status"], "completed", "{record:?}");
    let outputs = result(record);
    assert_eq!(outputs["content_type"], "model/gltf-binary");
    assert_eq!(outputs["format"], "glb");
    let generator = outputs["generator"].as_str().unwrap();
    assert!(generator.contains("not a generative model"), "{generator}");
    let id = outputs["mesh"]["$artifact"]
        .as_str()
        .unwrap_or_else(|| panic!("the mesh is an artifact: {outputs}"));
    let path = system.dir().join(format!("{id}.glb"));
    let output = system.gpuq(&["artifact", "get", id, "-o", path.to_str().unwrap()], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&path).unwrap()
}

/// A "a red tower" job with `seed`, run to its end.
async fn tower_job(system: &TestSystem, job_id: &str, seed: u64) -> HashMap<String, String> {
    let inputs = format!(r#", "inputs": {{"prompt": "a red tower", "seed": {seed}}}"#);
    submit(system, "text_to_mesh", job_id, &inputs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedural_mesh_jobs_return_the_same_glb_for_the_same_prompt_and_seed() {
    let script = repository_root().join("adapters/python/example_adapter.py");
    let command = format!(
        "command = [\"{}\", \"{}\"]",
        venv_python().display(),
        script.display()
    );
    // Outputs over 1 kB go to the artifact store; every mesh is larger.
    let system = ConfigBuilder::one_host()
        .section("[artifacts]\ninline_max_bytes = 1024")
        .model_of_feature("procedural_mesh", "text_to_mesh", "adapter", 512, "")
        .model_keys("timeout_s = 30")
        .params(&command)
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("procedural_mesh"), 1, WAIT)
        .await;

    let first = fetch_mesh(&system, &tower_job(&system, "mesh-seed-7", 7).await);
    let document = glb_json(&first);
    let meshes = document["meshes"].as_array().unwrap();
    assert!(!meshes.is_empty(), "{document}");
    let again = fetch_mesh(&system, &tower_job(&system, "mesh-seed-7-again", 7).await);
    assert!(first == again, "same prompt and seed, different bytes");
    let other = fetch_mesh(&system, &tower_job(&system, "mesh-seed-8", 8).await);
    glb_json(&other);
    assert!(first != other, "another seed gave the same mesh");

    // A prompt over 2000 characters fails through the adapter's error path.
    let long = "x".repeat(2001);
    let inputs = format!(r#", "inputs": {{"prompt": "{long}"}}"#);
    let record = submit(&system, "text_to_mesh", "mesh-long-prompt", &inputs).await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );
}

#[test]
fn procedural_mesh_python_unit_tests_pass() {
    let root = repository_root();
    let output = Command::new("timeout")
        .arg("120")
        .arg(venv_python())
        .args(["-m", "unittest", "discover", "-s"])
        .arg(root.join("adapters/python"))
        .args(["-p", "test_procedural_mesh.py"])
        .current_dir(&root)
        .output()
        .expect("running python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
