//! A counting global allocator: bytes allocated minus bytes freed *on the current thread*, and
//! that figure's peak, so a test can bound the memory its own code holds while other tests run
//! in parallel threads. Memory the C client libraries allocate (libpq, libmysqlclient, SQLite's
//! page cache) goes through `malloc`, not through here: what is measured is the Rust side,
//! where the rows live once decoded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub(crate) struct Counting;

thread_local! {
    static CURRENT: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn add(delta: i64) {
    // `try_with`: never panic inside the allocator, even while thread-locals are torn down.
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + delta;
        c.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now);
            }
        });
    });
}

fn size(layout: Layout) -> i64 {
    i64::try_from(layout.size()).unwrap_or(i64::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// bookkeeping touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(size(layout));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(size(layout));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        add(-size(layout));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as "new block, then old block freed": the peak includes both, as the
            // copy may need them at once.
            add(i64::try_from(new_size).unwrap_or(i64::MAX));
            add(-size(layout));
        }
        p
    }
}

/// Runs `f` and returns its value with the most bytes this thread held at once during `f`,
/// above what it held when `f` started.
pub(crate) fn peak_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, u64::try_from(peak - start).unwrap_or(0))
}
