use super::*;
use crate::gpu::GpuSource;
use gpuq_common::{Config, ConfigOverrides};

const MODELS: &str = r#"
[[models]]
id = "light"
feature = "seg"
runtime = "echo"
vram_mib = 4096
[[models]]
id = "heavy"
feature = "mesh"
runtime = "echo"
vram_mib = 19456
"#;

fn config(dispatcher: &str) -> Config {
    Config::parse(
        &format!("[dispatcher]\n{dispatcher}\n{MODELS}"),
        None,
        &ConfigOverrides::default(),
    )
    .unwrap()
}

fn gpu(index: u32, total: u64, foreign: u64) -> GpuInfo {
    GpuInfo {
        index,
        uuid: None,
        name: format!("gpu{index}"),
        memory_total_mib: total,
        memory_used_mib: foreign,
        foreign_used_mib: foreign,
        utilization_percent: None,
        temperature_c: None,
        processes: Vec::new(),
        source: GpuSource::Declared,
    }
}

fn run(c: &Config, gpus: &[GpuInfo]) -> Plan {
    plan("h", gpus, &c.dispatcher, c.registry(), None).unwrap()
}

#[test]
fn one_slot_per_gpu_gets_everything_after_the_reserve() {
    let c = config("vram_reserve_mib = 1024");
    let p = run(&c, &[gpu(0, 24576, 0)]);
    assert_eq!(p.slots.len(), 1);
    assert_eq!(p.slots[0].vram_budget_mib, 23552);
    assert_eq!(p.slots[0].worker_id, "h-gpu0-slot0");
    assert_eq!(p.slots[0].cuda_visible_devices, "0");
    assert_eq!(p.slots[0].models, ["light", "heavy"]);
    assert!(p.unplaced.is_empty());
}

#[test]
fn slots_split_the_budget_and_drop_models_that_no_longer_fit() {
    let c = config("workers_per_gpu = 2\nvram_reserve_mib = 576");
    let p = run(&c, &[gpu(0, 24576, 0), gpu(1, 24576, 0)]);
    assert_eq!(p.slots.len(), 4);
    assert!(p.slots.iter().all(|s| s.vram_budget_mib == 12000));
    assert!(p.slots.iter().all(|s| s.models == ["light"]));
    assert_eq!(p.slots[3].worker_id, "h-gpu1-slot1");
    assert_eq!(
        p.unplaced,
        ["no GPU on host h has enough memory for model heavy: needs 19456 MiB, largest slot has 12000 MiB"]
    );
}

#[test]
fn memory_used_by_other_processes_shrinks_the_budget() {
    let c = config("vram_reserve_mib = 0");
    let p = run(&c, &[gpu(0, 24000, 6000)]);
    assert_eq!(p.slots[0].vram_budget_mib, 18000);
    assert_eq!(p.slots[0].models, ["light"]);
}

#[test]
fn model_filters_limit_what_the_host_serves() {
    let c = config("vram_reserve_mib = 0\nmodels = [\"light\"]");
    assert_eq!(run(&c, &[gpu(0, 24000, 0)]).slots[0].models, ["light"]);
    // --models overrides dispatcher.models.
    let only = ["heavy".to_string()];
    let p = plan(
        "h",
        &[gpu(0, 24000, 0)],
        &c.dispatcher,
        c.registry(),
        Some(&only),
    )
    .unwrap();
    assert_eq!(p.slots[0].models, ["heavy"]);
}

#[test]
fn a_gpu_too_small_for_anything_gets_an_empty_slot() {
    let c = config("vram_reserve_mib = 0");
    let p = run(&c, &[gpu(0, 2048, 0)]);
    assert!(p.slots[0].models.is_empty());
    assert_eq!(p.unplaced.len(), 2);
    assert!(p.describe().contains("not started"));
}

#[test]
fn dedicated_slot_for_a_heavy_model_and_a_shared_slot_for_the_rest() {
    let c = config(
        "vram_reserve_mib = 256\n\
         [[dispatcher.slots]]\ngpu = 0\nvram_mib = 20000\nmodels = [\"heavy\"]\n\
         [[dispatcher.slots]]\ngpu = 0\n",
    );
    let p = run(&c, &[gpu(0, 24576, 0), gpu(1, 8192, 0)]);
    let budgets: Vec<_> = p
        .slots
        .iter()
        .map(|s| (s.worker_id.as_str(), s.vram_budget_mib))
        .collect();
    // GPU 0 uses its declared slots; GPU 1 keeps the default one equal slot.
    assert_eq!(
        budgets,
        [
            ("h-gpu0-slot0", 20000),
            ("h-gpu0-slot1", 4320),
            ("h-gpu1-slot0", 7936)
        ]
    );
    assert_eq!(p.slots[0].models, ["heavy"]);
    assert_eq!(p.slots[1].models, ["light"]);
    assert_eq!(p.slots[2].models, ["light"]);
    assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
}

#[test]
fn declared_slots_that_over_commit_a_gpu_are_refused() {
    let c = config(
        "vram_reserve_mib = 1000\n\
         [[dispatcher.slots]]\ngpu = 0\nvram_mib = 12000\n\
         [[dispatcher.slots]]\ngpu = 0\nvram_mib = 12000\n",
    );
    let err = plan(
        "h",
        &[gpu(0, 24000, 500)],
        &c.dispatcher,
        c.registry(),
        None,
    )
    .unwrap_err();
    assert_eq!(err.asked, 24000);
    assert_eq!(err.usable, 22500);
    assert!(err.to_string().contains("GPU 0 ask for 24000 MiB"), "{err}");
}

#[test]
fn a_listed_model_that_does_not_fit_its_slot_and_unknown_gpus_are_reported() {
    let c = config(
        "vram_reserve_mib = 0\n\
         [[dispatcher.slots]]\ngpu = 0\nvram_mib = 8000\nmodels = [\"heavy\"]\n\
         [[dispatcher.slots]]\ngpu = 7\n",
    );
    let p = run(&c, &[gpu(0, 24000, 0)]);
    assert!(p.slots[0].models.is_empty());
    assert!(
        p.unplaced
            .iter()
            .any(|r| r.contains("model heavy is listed for slot h-gpu0-slot0 but needs 19456 MiB")),
        "{:?}",
        p.unplaced
    );
    assert!(
        p.unplaced.iter().any(|r| r.contains("GPU 7 ignored")),
        "{:?}",
        p.unplaced
    );
    assert!(
        p.unplaced
            .iter()
            .any(|r| r.contains("model light is not listed for any slot")),
        "{:?}",
        p.unplaced
    );
}

/// Worker ids are unique across the fleet when host ids are (the host lease
/// makes them so): no host id, however it ends, yields another host's worker
/// id, since the GPU and slot numbers after the last `-gpu` and `-slot` are
/// digits only.
#[test]
fn distinct_host_ids_never_share_a_worker_id() {
    let c = config("workers_per_gpu = 2");
    let gpus: Vec<GpuInfo> = (0..11).map(|i| gpu(i, 24576, 0)).collect();
    let hosts = [
        "a",
        "a-gpu0",
        "a-gpu1",
        "a-gpu1-slot0",
        "a-gpu10",
        "a-gpu1-slot",
        "a-",
        "a-gpu",
        "a-slot0",
    ];
    let mut seen = std::collections::HashMap::new();
    for host in hosts {
        let p = plan(host, &gpus, &c.dispatcher, c.registry(), None).unwrap();
        for slot in p.slots {
            if let Some(other) = seen.insert(slot.worker_id.clone(), host) {
                panic!("hosts {other} and {host} both run {}", slot.worker_id);
            }
        }
    }
    assert_eq!(seen.len(), hosts.len() * 11 * 2);
}
