//! The machine's own share of the GPU-bound figure: the synthetic `sleep`
//! model's job lasts its `duration_ms` from its start, ending in a thread
//! sleep, and a thread sleep wakes late (timer slack and the scheduler's
//! wake-up). That lateness is in every job's figure and is no part of gpuq:
//! measured beside the GPU-bound run, on a thread of the bench process, it
//! tells the overhead gpuq adds from the overhead the machine adds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sleeps of `sleep` measured until the returned guard is stopped (or
/// dropped: a run that failed ends the thread too, after one more sleep).
pub struct Overshoot {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<f64>>>,
}

impl Overshoot {
    /// Starts sleeping `sleep` over and over on a thread of its own.
    pub fn start(sleep: Duration) -> Overshoot {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut late_ms = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                std::thread::sleep(sleep);
                late_ms.push((started.elapsed().saturating_sub(sleep)).as_secs_f64() * 1000.0);
            }
            late_ms
        });
        Overshoot {
            stop,
            thread: Some(thread),
        }
    }

    /// The median lateness of the sleeps so far, in ms.
    pub fn stop(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        let mut late_ms = thread.join().unwrap_or_default();
        late_ms.sort_by(f64::total_cmp);
        super::percentile(&late_ms, 50.0)
    }
}

impl Drop for Overshoot {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
