//! The peers' table memory: a warm pool of 4 KiB frames, physical address = virtual address.
//!
//! Like the engine's heap host, frames freed by one iteration are reused by the next (last in,
//! first out), so no peer pays page faults after the first iteration. Unlike the heap host, the
//! pool keeps no map of outstanding frames and does not poison freed frames: a push and a pop on a
//! vector are all it costs, which favours the peers slightly.

use std::alloc::Layout;
use std::cell::RefCell;

/// Bytes per frame.
pub const FRAME: usize = 4096;
const CHUNK_FRAMES: usize = 1024;

#[derive(Default)]
struct Pool {
    free: Vec<usize>,
    outstanding: u64,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

fn grow(pool: &mut Pool) {
    let layout = Layout::from_size_align(CHUNK_FRAMES * FRAME, FRAME).expect("valid layout");
    // SAFETY: the layout has a non-zero size.
    let base = unsafe { std::alloc::alloc(layout) };
    assert!(!base.is_null(), "out of memory for the frame pool");
    // Touch every frame now, so that no benchmark iteration pays the page faults.
    // SAFETY: `base` is a fresh allocation of exactly this many bytes.
    unsafe { core::ptr::write_bytes(base, 0, CHUNK_FRAMES * FRAME) };
    // The chunk is never freed: the pool lives as long as the process.
    pool.free
        .extend((0..CHUNK_FRAMES).rev().map(|i| base as usize + i * FRAME));
}

/// A 4 KiB-aligned frame (contents unspecified), or `None` never (the pool grows).
pub fn alloc() -> Option<usize> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.free.is_empty() {
            grow(&mut p);
        }
        p.outstanding += 1;
        p.free.pop()
    })
}

/// Gives a frame back.
pub fn free(pa: usize) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        debug_assert!(pa % FRAME == 0);
        p.outstanding -= 1;
        p.free.push(pa);
    })
}

/// Frames handed out and not given back.
pub fn outstanding() -> u64 {
    POOL.with(|p| p.borrow().outstanding)
}
