use std::time::Duration;

use futures_util::FutureExt;
use gpuq_common::{Config, ConfigOverrides, ValueMap};

use super::*;
use crate::runtime::{Progress, RunError};

/// A fake runtime that records its unload in a shared log.
struct Fake {
    id: String,
    log: Arc<SyncMutex<Vec<String>>>,
}

impl Runtime for Fake {
    fn run(
        &self,
        inputs: ValueMap,
        _: Duration,
        _: Progress,
    ) -> BoxFuture<'_, Result<ValueMap, RunError>> {
        async move { Ok(inputs) }.boxed()
    }
    fn unload(&self) -> BoxFuture<'_, ()> {
        self.log.lock().push(format!("unload {}", self.id));
        async {}.boxed()
    }
}

fn models() -> Vec<ModelConfig> {
    let text = r#"
[[models]]
id = "a"
feature = "f"
runtime = "echo"
vram_mib = 4000
[[models]]
id = "b"
feature = "f"
runtime = "echo"
vram_mib = 4000
[[models]]
id = "c"
feature = "f"
runtime = "echo"
vram_mib = 4000
[[models]]
id = "big"
feature = "f"
runtime = "echo"
vram_mib = 7000
[[models]]
id = "huge"
feature = "f"
runtime = "echo"
vram_mib = 20000
"#;
    Config::parse(text, None, &ConfigOverrides::default())
        .unwrap()
        .models
        .clone()
}

fn pool(budget: u64, max: usize) -> (Arc<ModelPool>, Arc<SyncMutex<Vec<String>>>) {
    let log = Arc::new(SyncMutex::new(Vec::new()));
    let loader_log = Arc::clone(&log);
    let loader: Loader = Arc::new(move |model: ModelConfig| {
        let log = Arc::clone(&loader_log);
        async move {
            log.lock().push(format!("load {}", model.id));
            Ok(Arc::new(Fake { id: model.id, log }) as Arc<dyn Runtime>)
        }
        .boxed()
    });
    (ModelPool::new(Some(budget), max, loader, None), log)
}

fn model(id: &str) -> ModelConfig {
    models().into_iter().find(|m| m.id == id).unwrap()
}

async fn use_once(pool: &Arc<ModelPool>, id: &str) {
    let lease = pool.acquire(&model(id), None).await.unwrap();
    drop(lease);
    // Releases happen on a spawned task; let it run.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn resident(pool: &ModelPool) -> Vec<String> {
    let mut ids: Vec<String> = pool.snapshot().0.into_iter().map(|r| r.model).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn loads_on_first_use_and_reuses_resident_models() {
    let (pool, log) = pool(10_000, 2);
    use_once(&pool, "a").await;
    use_once(&pool, "a").await;
    assert_eq!(*log.lock(), ["load a"]);
    let (residents, stats) = pool.snapshot();
    assert_eq!(residents[0].jobs, 2);
    assert_eq!(stats.loads, 1);
}

#[tokio::test]
async fn least_recently_used_idle_model_is_evicted_at_the_model_limit() {
    let (pool, log) = pool(100_000, 2);
    use_once(&pool, "a").await;
    use_once(&pool, "b").await;
    use_once(&pool, "a").await; // a is now more recent than b
    use_once(&pool, "c").await;
    assert_eq!(*log.lock(), ["load a", "load b", "unload b", "load c"]);
    assert_eq!(resident(&pool), ["a", "c"]);
}

#[tokio::test]
async fn the_budget_is_never_exceeded_by_declared_sizes() {
    let (pool, log) = pool(10_000, 5);
    use_once(&pool, "a").await;
    use_once(&pool, "b").await; // 8000 of 10000
    use_once(&pool, "big").await; // 7000: both a and b must go
    assert_eq!(
        *log.lock(),
        ["load a", "load b", "unload a", "unload b", "load big"]
    );
    assert_eq!(pool.snapshot().1.peak_resident_mib, 8000);
    let error = pool.acquire(&model("huge"), None).await.err().unwrap();
    assert!(
        error
            .reason
            .contains("more than this worker's budget of 10000 MiB"),
        "{error}"
    );
}

#[tokio::test]
async fn a_model_in_use_is_not_evicted_and_the_load_waits_for_it() {
    let (pool, log) = pool(8_000, 2);
    let held = pool.acquire(&model("a"), None).await.unwrap();
    use_once(&pool, "b").await;
    let waiting = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.acquire(&model("big"), None).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // b (idle) went; a is in use, so big (7000) still cannot fit next to it.
    assert!(!waiting.is_finished());
    assert_eq!(*log.lock(), ["load a", "load b", "unload b"]);
    drop(held);
    tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        *log.lock(),
        ["load a", "load b", "unload b", "unload a", "load big"]
    );
}

#[tokio::test]
async fn a_gpu_without_free_memory_refuses_the_load_as_out_of_memory() {
    let (pool, _) = pool(10_000, 2);
    let probe: FreeMemoryProbe = Arc::new(|| Some(1_000));
    let pool = ModelPool::new(Some(10_000), 2, Arc::clone(&pool.loader), Some(probe));
    let error = pool.acquire(&model("a"), None).await.err().unwrap();
    assert_eq!(error.code, ErrorCode::OutOfMemory);
    assert!(error.reason.contains("1000 MiB free"), "{error}");
}

#[tokio::test]
async fn a_job_of_a_big_size_class_gets_room_beside_the_other_models() {
    let (pool, log) = pool(10_000, 3);
    use_once(&pool, "a").await;
    use_once(&pool, "b").await;
    assert_eq!(resident(&pool), ["a", "b"]);
    // A job of "a" whose class needs 5000 MiB fits beside "b"
    // (4000 + 5000 <= 10000): nothing is unloaded.
    drop(pool.acquire(&model("a"), Some(5_000)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(resident(&pool), ["a", "b"]);
    // One that needs 7000 MiB does not: "b" (idle) is unloaded first.
    drop(pool.acquire(&model("a"), Some(7_000)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(resident(&pool), ["a"]);
    assert!(log.lock().contains(&"unload b".to_owned()));
    // Loading a model for such a job makes the same room.
    use_once(&pool, "b").await;
    drop(pool.acquire(&model("c"), Some(6_500)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(resident(&pool), ["c"]);
    // More than the whole budget is capped at it (it may run out of memory,
    // which is recorded), never an endless wait.
    drop(pool.acquire(&model("a"), Some(50_000)).await.unwrap());
}

#[tokio::test]
async fn a_load_is_sampled_while_it_runs_and_its_peak_kept() {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The process's memory: 500 before; 5000 for a while during the load
    // (a wider copy of the weights), 2000 once it settled.
    let usage = Arc::new(AtomicU64::new(500));
    let during = Arc::clone(&usage);
    let loader: Loader = Arc::new(move |model: ModelConfig| {
        let usage = Arc::clone(&during);
        async move {
            usage.store(5_000, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            usage.store(2_000, Ordering::SeqCst);
            let log = Arc::new(SyncMutex::new(Vec::new()));
            Ok(Arc::new(Fake { id: model.id, log }) as Arc<dyn Runtime>)
        }
        .boxed()
    });
    let pool = ModelPool::new(Some(10_000), 2, loader, None);
    let read = Arc::clone(&usage);
    pool.set_usage_probe(
        Arc::new(move || Some(read.load(Ordering::SeqCst))),
        Duration::from_millis(5),
    );
    let lease = pool.acquire(&model("a"), None).await.unwrap();
    assert_eq!(lease.resident_mib, Some(1_500));
    assert_eq!(lease.load_peak_mib, Some(4_500));
}
