//! The job page (`/jobs/<id>`) in a real headless Chromium: a mesh job of
//! the example adapter's `procedural_mesh` model shows its record, timeline
//! and plain outputs, and its GLB (an artifact, fetched with the page's
//! submit token) loads and draws in the 3D viewer; an echo job's OBJ and PLY
//! outputs go through the page's converter into the viewer, its PNG shows as
//! an image and its text stays text; an admin token gets a cancel button
//! that cancels a running job, a submit token none. Saves docs/job-page.png.

mod browser_support;

use std::path::Path;

use browser_support::{Browser, WAIT};
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::{start_gateway, Gateway};
use reqwest::Method;
use serde_json::{json, Value};

const ALICE: &str = "alice-submit-token-0001";
const OPS: &str = "ops-admin-token-000001";

const TETRAHEDRON_OBJ: &str =
    "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n";
const TETRAHEDRON_PLY: &str = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\n\
    property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n\
    property uchar blue\nelement face 4\nproperty list uchar int vertex_indices\nend_header\n\
    0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0 0 0 255\n0 0 1 255 255 0\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n";
/// A 1 × 1 PNG.
const PIXEL_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// Whether the viewer of output `key` loaded its model, the model's size,
/// and how many pixels it drew (from the viewer's own canvas); null until loaded.
fn viewer_script(key: &str) -> String {
    format!(
        "const done = arguments[arguments.length - 1];
         const viewer = document.querySelector('model-viewer[data-output=\"{key}\"]');
         if (!viewer || !viewer.loaded || viewer.dataset.state !== 'loaded') return done(null);
         viewer.scrollIntoView(); // model-viewer draws only while it is on screen
         const size = viewer.getDimensions();
         const image = new Image();
         image.onload = () => {{
           const canvas = document.createElement('canvas');
           canvas.width = image.width; canvas.height = image.height;
           const context = canvas.getContext('2d');
           context.drawImage(image, 0, 0);
           const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
           let drawn = 0;
           for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn++;
           done({{size: [size.x, size.y, size.z], drawn, total: pixels.length / 4}});
         }};
         image.onerror = () => done(null);
         image.src = viewer.toDataURL('image/png');"
    )
}

/// Waits until the viewer of `key` has drawn its model; returns what it saw.
async fn wait_for_model(browser: &Browser, key: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen = browser.run_async(&viewer_script(key)).await;
        if seen["drawn"].as_u64().unwrap_or(0) * 100 > seen["total"].as_u64().unwrap_or(u64::MAX) {
            assert!(
                seen["size"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d.as_f64().unwrap() > 0.1),
                "{seen}"
            );
            return seen;
        }
        if std::time::Instant::now() > deadline {
            let result = browser.text_of("result").await;
            panic!("the {key} model was never drawn: {seen}; the result shows: {result}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn submit(gateway: &Gateway, token: &str, body: Value) -> String {
    let (status, created, _) = gateway
        .call(Method::POST, "/v1/jobs", Some(body), Some(token))
        .await;
    assert_eq!(status, 201, "{created}");
    created["job_id"].as_str().unwrap().to_owned()
}

fn page(gateway: &Gateway, id: &str, token: &str) -> String {
    format!("{}/jobs/{id}?access_token={token}", gateway.base)
}

/// The buttons the page shows: [(id, disabled)].
async fn buttons(browser: &Browser) -> Value {
    browser.run("return [...document.querySelectorAll('#actions button')].map((b) => [b.id, b.disabled])").await
}

/// One host serving `procedural_mesh` (under the project's .venv Python),
/// `echo` and `sleep`; Alice submits, ops administers; outputs over 1 kB go
/// to the artifact store: the mesh does, the echo's small files do not.
fn scenario() -> ConfigBuilder {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let python = root.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/python-env.sh",
        python.display()
    );
    let script = root.join("adapters/python/example_adapter.py");
    let tokens = [(ALICE, "submit", "alice"), (OPS, "admin", "ops")].map(|(token, role, name)| {
        format!("[[gateway.tokens]]\ntoken = \"{token}\"\nrole = \"{role}\"\nname = \"{name}\"")
    });
    ConfigBuilder::one_host()
        .section(&tokens.join("\n"))
        .section("[artifacts]\ninline_max_bytes = 1024")
        .model_of_feature("procedural_mesh", "text_to_mesh", "adapter", 512, "")
        .model_keys("timeout_s = 30")
        .params(&format!(
            "command = [\"{}\", \"{}\"]",
            python.display(),
            script.display()
        ))
        .echo("echo")
        .model("sleep", "sleep", 1024)
        .model_keys("timeout_s = 120")
}

/// The steps of the timeline, in order.
async fn steps(browser: &Browser) -> Value {
    browser
        .run("return [...document.querySelectorAll('#timeline li')].map((li) => li.dataset.step)")
        .await
}

/// Alice's mesh job: the GLB is an artifact only she (and admins) may read,
/// and her page fetches it with her token.
async fn a_mesh_in_the_viewer(browser: &Browser, gateway: &Gateway) {
    let body = json!({"feature": "text_to_mesh", "inputs": {"prompt": "a red tower", "seed": 7}});
    let mesh_job = submit(gateway, ALICE, body).await;
    let record = gateway.wait_final_as(&mesh_job, Some(ALICE)).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(
        record["result"]["mesh"]["$artifact"].is_string(),
        "{record}"
    );
    browser.open(&page(gateway, &mesh_job, ALICE)).await;
    browser.wait_for_text("status", "completed").await;
    let seen = wait_for_model(browser, "mesh").await;
    println!("the mesh in the viewer: {seen}");
    assert_eq!(
        steps(browser).await,
        json!(["queued", "processing", "completed"])
    );
    let timeline = browser.text_of("timeline").await;
    assert!(
        timeline.contains("waited") && timeline.contains("ran") && timeline.contains("in all"),
        "{timeline}"
    );
    let fields = browser.text_of("record").await;
    assert!(
        fields.contains("procedural_mesh") && fields.contains("alice"),
        "{fields}"
    );
    let result = browser.text_of("result").await;
    assert!(
        result.contains("cylinder") && result.contains("artifact"),
        "{result}"
    );
    assert_eq!(
        buttons(browser).await,
        json!([]),
        "a submit token gets no buttons"
    );
    browser.run("window.scrollTo(0, 0)").await;
    browser.screenshot("job-page.png").await;
}

/// An echo job returns its inputs: OBJ and PLY meshes, a PNG, and text.
async fn obj_ply_png_and_text(browser: &Browser, gateway: &Gateway) {
    use base64::Engine;
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let inputs = json!({
        "shape.obj": {"$bytes": base64(TETRAHEDRON_OBJ.as_bytes())},
        "cloud.ply": {"$bytes": base64(TETRAHEDRON_PLY.as_bytes())},
        "pixel.png": {"$bytes": PIXEL_PNG},
        "note": "<b>not bold</b>",
    });
    let echo_job = submit(gateway, OPS, json!({"feature": "echo", "inputs": inputs})).await;
    let record = gateway.wait_final_as(&echo_job, Some(OPS)).await;
    assert_eq!(record["status"], "completed", "{record}");
    browser.open(&page(gateway, &echo_job, OPS)).await;
    browser.wait_for_text("status", "completed").await;
    wait_for_model(browser, "shape.obj").await;
    wait_for_model(browser, "cloud.ply").await;
    let width = browser
        .wait_for(
            "the PNG decoded",
            "const i = document.querySelector('img[data-output=\"pixel.png\"]'); return i && i.complete && i.naturalWidth",
        )
        .await;
    assert_eq!(width, json!(1));
    let escaped = browser
        .run("return [...document.querySelectorAll('#result b')].every((b) => b.textContent !== 'not bold')")
        .await;
    assert_eq!(escaped, json!(true), "record text is never parsed as HTML");
    assert!(browser.text_of("result").await.contains("<b>not bold</b>"));
    // Small inputs are kept in the record (`jobs.record_inputs_max_bytes`),
    // so an admin can re-submit: a new job with the same inputs, whose page opens.
    assert!(record["inputs"].is_object(), "{record}");
    assert_eq!(buttons(browser).await, json!([["resubmit", false]]));
    browser
        .run("document.getElementById('resubmit').click(); return true")
        .await;
    let moved = format!(
        "const p = decodeURIComponent(location.pathname); return p.startsWith('/jobs/') && p !== '/jobs/{echo_job}' ? p.slice(6) : null"
    );
    let again = browser
        .wait_for("the re-submitted job's page", &moved)
        .await;
    let again = again.as_str().expect("a job id").to_owned();
    let resubmitted = gateway.wait_final_as(&again, Some(OPS)).await;
    assert_eq!(resubmitted["status"], "completed", "{resubmitted}");
    assert_eq!(resubmitted["inputs"], record["inputs"]);
    assert_eq!(resubmitted["result"], record["result"]);
}

/// An admin cancels a running job from its page.
async fn an_admin_cancels(browser: &Browser, gateway: &Gateway) {
    let body = json!({"feature": "sleep", "inputs": {"duration_ms": 60000}});
    let sleeper = submit(gateway, OPS, body).await;
    browser.open(&page(gateway, &sleeper, OPS)).await;
    browser.wait_for_text("status", "processing").await;
    let click =
        "const b = document.getElementById('cancel'); if (!b) return null; b.click(); return true";
    browser.wait_for("the cancel button", click).await;
    browser.wait_for_text("status", "cancelled").await;
    let steps = steps(browser).await;
    assert_eq!(
        steps.as_array().unwrap().last(),
        Some(&json!("cancelled")),
        "{steps}"
    );
    let (_, record, _) = gateway
        .call(Method::GET, &format!("/v1/jobs/{sleeper}"), None, Some(OPS))
        .await;
    assert_eq!(record["status"], "cancelled", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_page_shows_the_record_timeline_and_meshes_in_the_viewer() {
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("procedural_mesh"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;
    let browser = Browser::start(1280, 1100).await;
    a_mesh_in_the_viewer(&browser, &gateway).await;
    obj_ply_png_and_text(&browser, &gateway).await;
    an_admin_cancels(&browser, &gateway).await;
}
