//! Decoding a job allocates only what the decoded job holds: its strings,
//! its inputs map and their values. Counted with a counting global
//! allocator (this test binary's own), for a job shaped like the
//! benchmark's no-op job: an id, a feature, a tenant and one binary input.
//!
//! Before issue 18 the worker also copied the content type and lowercased
//! it twice per job (once in `JobMessage::decode`, once to learn the
//! encoding again); this pins that those are gone.

// A global allocator is the one way to count allocations, and implementing
// one is unsafe by definition; this one only counts and forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use gpuq_common::wire::{Encoding, Value};
use gpuq_common::JobMessage;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn job() -> JobMessage {
    let mut job: JobMessage = serde_json::from_str(r#"{"feature": "echo"}"#).unwrap();
    job.job_id = "0c6f4d8e-0f2b-4c1e-9d59-2f7b1c3a4e5d".into();
    job.tenant = Some("acme".into());
    job.submitted_at_ms = Some(1_764_000_000_000);
    job.inputs.insert("blob".into(), Value::Binary(vec![7; 64]));
    job
}

/// Allocations made by `f`, run on this thread alone (the test is the
/// only one in its binary).
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let value = f();
    (ALLOCATIONS.load(Ordering::Relaxed) - before, value)
}

#[test]
fn decoding_allocates_only_what_the_job_holds() {
    let sent = job();
    let body = Encoding::Msgpack.encode(&sent).unwrap();
    for content_type in [Some("Application/MsgPack; charset=binary"), None] {
        let (count, decoded) =
            allocations(|| JobMessage::decode_with_encoding(content_type, &body, None));
        let (decoded, encoding) = decoded.unwrap();
        assert_eq!(decoded, sent);
        assert_eq!(encoding, Encoding::Msgpack);
        // job_id, feature, tenant, the inputs map's node, its key, the bytes.
        assert!(count <= 6, "{count} allocations for {content_type:?}");
    }
}
