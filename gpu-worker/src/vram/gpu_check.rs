//! The measured-VRAM check on a real GPU (issue 17), run by
//! `scripts/gpu-check.sh` where a GPU, NVML and libtorch are present; it is
//! `#[ignore]`d everywhere else. It needs neither RabbitMQ nor Redis: it
//! drives the worker's own pieces directly. The TorchScript module is the
//! test fixture `tests/fixtures/affine.pt` (made by
//! `tests/fixtures/make_affine_torchscript.py`), loaded on `cuda:0` by the
//! worker's loader inside the residency pool (which samples the load), then
//! run on inputs of three sizes with the same sampler the worker uses per
//! job ([`super::sample_peak`]) over NVML (`NvmlVram`). It prints per size
//! class what the worker would learn (p50, p99, max, from
//! `gpuq_common::vram`) and `nvidia-smi`'s view of this process, to compare.

use std::sync::Arc;
use std::time::Duration;

use gpuq_common::vram::{size_class, ModelVram};
use gpuq_common::{Config, ConfigOverrides, Value, ValueMap};

use crate::gpu::{NvmlVram, VramSource};
use crate::pool::{Loader, ModelPool};

fn config() -> Config {
    // Where the binary runs from another checkout, the script says where.
    let fixture = std::env::var("GPUQ_GPU_CHECK_MODEL").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/affine.pt").to_owned()
    });
    let text = format!(
        r#"
[[models]]
id = "affine"
feature = "affine"
runtime = "torchscript"
vram_mib = 512
[models.params]
path = "{fixture}"
device = "cuda"
inputs = [{{ name = "x", dtype = "float32", shape = [-1, 3] }}]
outputs = ["y"]
"#
    );
    Config::parse(&text, None, &ConfigOverrides::default()).expect("check config")
}

/// A `[rows, 3]` float32 tensor input of ones.
fn input(rows: usize) -> ValueMap {
    let data: Vec<u8> = std::iter::repeat_n(1.0f32.to_le_bytes(), rows * 3)
        .flatten()
        .collect();
    let tensor = Value::Map(vec![
        (Value::from("dtype"), Value::from("float32")),
        (
            Value::from("shape"),
            Value::Array(vec![Value::from(rows as u64), Value::from(3u64)]),
        ),
        (Value::from("data"), Value::Binary(data)),
    ]);
    [("x".to_owned(), tensor)].into_iter().collect()
}

fn nvidia_smi_for(pid: u32) -> String {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader",
        ])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.trim_start().starts_with(&pid.to_string()))
            .collect::<Vec<_>>()
            .join("; "),
        Err(error) => format!("nvidia-smi: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an NVIDIA GPU, NVML and libtorch with CUDA: scripts/gpu-check.sh"]
async fn measured_vram_on_a_real_gpu() {
    let pid = std::process::id();
    let devices = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "0".into());
    let source: Arc<dyn VramSource> =
        Arc::new(NvmlVram::open(Some(&devices), pid).expect("NVML and the GPU are readable"));
    let config = config();
    let model = config.registry().model("affine").unwrap().clone();
    let loader: Loader =
        Arc::new(|model| Box::pin(async move { crate::runtime::load(&model).await }));
    let pool = ModelPool::new(Some(16_384), 1, loader, None);
    let probe = Arc::clone(&source);
    pool.set_usage_probe(
        Arc::new(move || probe.used_mib()),
        Duration::from_millis(20),
    );
    let lease = pool
        .acquire(&model, None)
        .await
        .expect("affine.pt loads on cuda:0");
    println!(
        "loaded affine.pt on cuda:0: resident {:?} MiB, load peak {:?} MiB (process before the load excluded); nvidia-smi: {}",
        lease.resident_mib,
        lease.load_peak_mib,
        nvidia_smi_for(pid)
    );
    let mut learned = ModelVram::new("affine", "gpu-check", model.vram_mib);
    for rows in [1usize << 18, 1 << 21, 1 << 23] {
        for _ in 0..5 {
            let inputs = input(rows);
            let class = size_class(&inputs, None);
            let progress: crate::runtime::Progress = Arc::new(|_| {});
            let run = lease.runtime.run(inputs, Duration::from_secs(60), progress);
            let (result, peak) =
                super::sample_peak(source.as_ref(), Duration::from_millis(10), run).await;
            result.expect("the job runs");
            learned.observe(&class, peak.unwrap_or(0), gpuq_common::now_ms());
        }
    }
    for (class, peaks) in &learned.classes {
        println!(
            "class {class}: p50 {} MiB, p99 {} MiB, max {} MiB over {} jobs",
            peaks.p50_mib, peaks.p99_mib, peaks.max_mib, peaks.samples
        );
    }
    println!(
        "all jobs: p99 {} MiB; nvidia-smi now: {}",
        learned.peaks.p99_mib,
        nvidia_smi_for(pid)
    );
    assert!(learned.peaks.max_mib > 0, "NVML read this process's memory");
}
