//! The atomics the engine uses: `core`'s, or loom's when built with `--cfg loom` so that the
//! model-checker tests (tests/loom.rs) explore every interleaving of the real engine code.

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A spin-wait hint (`loom::thread::yield_now` under loom, so the model can run the other side).
#[inline(always)]
pub fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

#[cfg(all(feature = "std", loom))]
pub use loom::sync::{Mutex, MutexGuard};
#[cfg(all(feature = "std", not(loom)))]
pub use std::sync::{Mutex, MutexGuard};
