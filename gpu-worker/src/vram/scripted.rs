//! The scripted VRAM source: what synthetic models say they use, for tests
//! and demos without a GPU (`gpu.vram_source = "scripted"`). Named as such
//! wherever it shows; nothing here measures a GPU.
//!
//! One process-wide account: the synthetic `sleep` model adds its
//! `vram_resident_mib` while loaded and its job's `vram_peak_mib` while a
//! job runs. With a capacity set (the worker's budget), an allocation past
//! it fails the way CUDA's does: the job ends `out_of_memory`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::gpu::VramSource;

static USED_MIB: AtomicU64 = AtomicU64::new(0);
/// 0: no capacity (nothing fails).
static CAPACITY_MIB: AtomicU64 = AtomicU64::new(0);

/// Sets the capacity allocations are checked against (0: none).
pub fn set_capacity(mib: u64) {
    CAPACITY_MIB.store(mib, Ordering::Relaxed);
}

/// Adds `mib` to the account; `false` (and nothing added) past the capacity.
pub fn allocate(mib: u64) -> bool {
    let capacity = CAPACITY_MIB.load(Ordering::Relaxed);
    let mut used = USED_MIB.load(Ordering::Relaxed);
    loop {
        let next = used.saturating_add(mib);
        if capacity > 0 && next > capacity {
            return false;
        }
        match USED_MIB.compare_exchange(used, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => used = now,
        }
    }
}

/// Takes `mib` back off the account.
pub fn free(mib: u64) {
    let _ = USED_MIB.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
        Some(used.saturating_sub(mib))
    });
}

/// Reads the account as a [`VramSource`].
pub struct ScriptedVram;

impl VramSource for ScriptedVram {
    fn used_mib(&self) -> Option<u64> {
        Some(USED_MIB.load(Ordering::Relaxed))
    }
}
