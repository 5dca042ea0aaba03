//! Test-only: measures how many bytes a closure allocates at its peak, on its own thread, so a
//! fuzz test can hold a parser to a bound that does not depend on what the input claims.
//!
//! Installed as the global allocator of the library's unit-test binary only. Every allocation
//! goes to the system allocator; the count is kept only while [`peak_bytes`] runs on the
//! calling thread, so other tests running in parallel are neither counted nor slowed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Meter;

thread_local! {
    /// Whether this thread is being measured, the bytes live now and the most live so far.
    static STATE: Cell<(bool, usize, usize)> = const { Cell::new((false, 0, 0)) };
}

fn record(grow: usize, shrink: usize) {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = STATE.try_with(|s| {
        let (on, live, peak) = s.get();
        if on {
            let live = (live + grow).saturating_sub(shrink);
            s.set((on, live, peak.max(live)));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping only touches a
// thread-local `Cell` of plain integers, which never allocates.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns its result with the most bytes it had allocated at once (memory freed
/// inside `f` is subtracted; memory allocated before `f` and freed inside it is not counted).
pub(crate) fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    STATE.with(|s| s.set((true, 0, 0)));
    let r = f();
    let (_, _, peak) = STATE.with(|s| s.replace((false, 0, 0)));
    (r, peak)
}
