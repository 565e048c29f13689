//! The dashboard in a real headless Chromium (driven through chromedriver's
//! WebDriver API): the page loads, shows the hosts of a running system, a
//! job submitted while it is open appears and turns completed without a
//! reload, links to its job page, and after a burst of jobs the history
//! charts draw the queue that formed and the jobs that finished. Also saves
//! the screenshot shown in the README (docs/dashboard.png).

mod browser_support;

use browser_support::{Browser, WAIT};
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::TestSystem;
use serde_json::{json, Value};

/// The y coordinates of the series `series` of chart `chart`, or null
/// while it is not drawn. A series that reached above 0 is not flat.
fn series_script(chart: &str, series: &str) -> String {
    format!(
        "const line = document.querySelector('#chart-{chart} [data-series=\"{series}\"]');
         if (!line) return null;
         const ys = (line.getAttribute('points') || line.getAttribute('d').replace(/[MLZ]/g, ' '))
           .trim().split(/\\s+/).map((p) => +p.split(',')[1]);
         return {{count: ys.length, low: Math.min(...ys), high: Math.max(...ys)}};"
    )
}

/// Waits until series `series` of chart `chart` has left its baseline.
async fn wait_for_rise(browser: &Browser, chart: &str, series: &str) -> Value {
    let script = format!(
        "const s = (() => {{ {} }})(); return s && s.high - s.low > 1 ? s : null;",
        series_script(chart, series)
    );
    browser
        .wait_for(&format!("chart {chart} series {series} rising"), &script)
        .await
}

/// Submitted while the page is open: appears, then turns completed, and
/// links to its page; an earlier failed job shows its error.
async fn a_job_turns_completed_live(browser: &Browser, system: &TestSystem) {
    let output = system.gpuq(
        &[
            "submit",
            "sleep",
            "--input",
            "duration_ms=1500",
            "--job-id",
            "dashboard-live-job",
        ],
        WAIT,
    );
    assert!(output.status.success());
    browser.wait_for_text("jobs", "dashboard-live-job").await;
    browser
        .wait_for(
            "the job turning completed on the page",
            "return document.getElementById('jobs').innerText.split('\\n')
               .some((l) => l.startsWith('dashboard-live-job') && l.includes('completed'))",
        )
        .await;
    let jobs = browser.text_of("jobs").await;
    assert!(
        jobs.contains("model_failed"),
        "the failed job and its error show too: {jobs}"
    );
    let link = browser
        .run("return document.querySelector('#jobs a[href=\"/jobs/dashboard-live-job\"]') != null")
        .await;
    assert_eq!(link, json!(true), "the job links to its page");
}

/// A burst: 24 jobs of 500 ms on two workers keep the queue non-empty for
/// about 6 s, three samples at 2 s; the charts draw the queue, the jobs
/// finishing, the busy workers and the GPU's memory.
async fn a_burst_is_charted(browser: &Browser, port: u16) {
    let client = reqwest::Client::new();
    for i in 0..24 {
        let body = json!({"feature": "sleep", "inputs": {"duration_ms": 500}, "job_id": format!("burst-{i}")});
        let response = client
            .post(format!("http://127.0.0.1:{port}/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let queued = wait_for_rise(browser, "queued", "sleep").await;
    let finished = wait_for_rise(browser, "finished", "completed").await;
    let busy = wait_for_rise(browser, "workers", "busy").await;
    assert!(queued["count"].as_u64().unwrap() >= 2, "{queued}");
    assert!(finished["count"].as_u64().unwrap() >= 2, "{finished}");
    assert!(busy["count"].as_u64().unwrap() >= 2, "{busy}");
    // The GPU's memory: a stacked area per use, and a legend naming them.
    let gpu = browser
        .wait_for(
            "the GPU memory chart",
            "const box = document.querySelector('#history-gpus [data-gpu=\"gpu-host-1/0\"]');
             return box && box.querySelectorAll('svg path[data-series]').length === 3 ? box.innerText : null",
        )
        .await;
    let gpu = gpu.as_str().unwrap();
    assert!(
        gpu.contains("gpuq") && gpu.contains("others") && gpu.contains("free"),
        "{gpu}"
    );
    // Each model's VRAM, declared (nothing measured yet: no GPU here).
    let vram = browser
        .wait_for(
            "the model VRAM table",
            "const row = document.querySelector('#vram tr[data-model=\"sleep\"]'); return row ? row.innerText : null",
        )
        .await;
    let vram = vram.as_str().unwrap();
    assert!(vram.contains("4096"), "declared and admitted: {vram}");
    // Every burst job done, so the picture shows the queue drained.
    browser
        .wait_for(
            "the burst's last job completed",
            "return document.getElementById('jobs').innerText.includes('burst-23')
               && !/burst-\\d+\\s.*(queued|processing)/.test(document.getElementById('jobs').innerText)",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_hosts_jobs_live_and_charts_a_burst() {
    // The screenshot's scenario: one 24 GiB GPU split in two workers.
    let system = ConfigBuilder::new()
        .host("gpu-host-1")
        .dispatcher("workers_per_gpu = 2")
        .gpu_named(24576, "declared-24g")
        .echo("echo")
        .model("sleep", "sleep", 4096)
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 2, WAIT)
        .await;
    let port = gpuq_integration_tests::http::free_port();
    let _gateway = system.spawn("gpuq", &["serve", "--listen", &format!("127.0.0.1:{port}")]);
    system.gpuq(
        &["submit", "echo", "--input", "prompt=wooden chair", "--wait"],
        WAIT,
    );
    let failing = [
        "--input",
        "fail=true",
        "--input",
        "duration_ms=10",
        "--wait",
    ];
    system.gpuq(&[&["submit", "sleep"][..], &failing].concat(), WAIT);

    let browser = Browser::start(1280, 1500).await;
    browser.open(&format!("http://127.0.0.1:{port}/")).await;
    let gpus = browser.wait_for_text("gpus", "gpu-host-1").await;
    assert!(gpus.contains("declared-24g"), "{gpus}");
    browser
        .wait_for_text("workers", "gpu-host-1-gpu0-slot1")
        .await;
    browser.wait_for_text("live", "live").await;
    a_job_turns_completed_live(&browser, &system).await;
    a_burst_is_charted(&browser, port).await;
    // One more sample, so the charts end at the drained queue.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    browser.screenshot("dashboard.png").await;
}
