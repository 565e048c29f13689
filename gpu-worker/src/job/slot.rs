//! Where a job's GPU slot comes from, and its place in the cancel registry.
//!
//! A job the session starts on a free slot holds it from the start. A job
//! the session *claims ahead* (issue 18: all slots busy, one of them about
//! to end) runs its decode, checks and claim while the slot is still
//! taken, then waits for the next slot that frees; the session queues for
//! no slot meanwhile, so that slot is this job's (the semaphore is first
//! come, first served). Its cancel is heard from the claim on, so a job
//! cancelled while it waits never needs the slot at all.

use std::sync::Arc;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::CancelRegistry;

/// One of the worker's `worker.concurrency` slots: a model runs only while
/// its job holds one.
pub type Slot = OwnedSemaphorePermit;

/// How a started job gets its slot.
pub enum SlotSource {
    /// The session took a free slot for it.
    Held(Slot),
    /// Claimed ahead: it takes the next slot that frees. `waiting` is
    /// dropped once it has its slot, or needs none (it ended before its
    /// run, or was cancelled), which tells the session to take slots again.
    Ahead {
        permits: Arc<Semaphore>,
        waiting: oneshot::Sender<()>,
    },
}

/// Why a job claimed ahead got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Cancelled while it waited: it ends cancelled without its run.
    Cancelled,
    /// A stuck model thread keeps its slot until the worker restarts: the
    /// job goes back to its queue.
    Restart,
}

impl SlotSource {
    /// The job's slot, once it has one.
    pub(super) async fn take(
        self,
        cancel: &CancellationToken,
        restart: &CancellationToken,
    ) -> Result<Slot, NoSlot> {
        match self {
            SlotSource::Held(slot) => Ok(slot),
            SlotSource::Ahead { permits, waiting } => {
                let taken = tokio::select! {
                    biased;
                    _ = restart.cancelled() => Err(NoSlot::Restart),
                    _ = cancel.cancelled() => Err(NoSlot::Cancelled),
                    slot = permits.acquire_owned() => Ok(slot.expect("the slot semaphore is never closed")),
                };
                drop(waiting);
                taken
            }
        }
    }
}

/// A job's place in the cancel registry, from its claim until its run
/// ends; forgotten when dropped (on every way out).
pub struct Registration {
    cancels: Arc<CancelRegistry>,
    job_id: String,
    pub token: CancellationToken,
}

impl CancelRegistry {
    /// Listens for `job_id`'s cancel until the returned registration drops.
    pub fn register(self: &Arc<Self>, job_id: &str) -> Registration {
        let token = CancellationToken::new();
        self.running.lock().insert(job_id.to_owned(), token.clone());
        Registration {
            cancels: Arc::clone(self),
            job_id: job_id.to_owned(),
            token,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels.running.lock().remove(&self.job_id);
    }
}
