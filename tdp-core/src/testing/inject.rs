//! Allocation failure injected at every point of an operation.

use crate::error::Error;
use crate::format::PteFormat;
use crate::host::Host;
use crate::table::Table;

use super::HeapHost;

/// Runs `op` on `table` with the k-th host allocation failing, for k = 0, 1, 2, … until the
/// operation no longer reaches k allocations, and returns the result of that last run.
///
/// After every run that failed with [`Error::OutOfMemory`] it asserts that the failure was the
/// injected one, that the host holds exactly the bytes it held before, that the tree's counters
/// are unchanged, and then calls `unchanged(table, k)` for the caller's own checks (typically:
/// every touched address still translates, through an independent walker, as before). It also
/// asserts that no injected failure is swallowed by a run that did not report it.
///
/// # Errors
/// Whatever the last, unfailed run of `op` returned.
///
/// # Panics
/// When one of those assertions fails (this is a test helper).
pub fn at_every_allocation<F: PteFormat, H: Host, R: core::fmt::Debug>(
    host: &HeapHost,
    table: &mut Table<F, H>,
    mut op: impl FnMut(&mut Table<F, H>) -> Result<R, Error>,
    mut unchanged: impl FnMut(&Table<F, H>, u64),
) -> Result<R, Error> {
    let bytes = host.outstanding_bytes();
    let stats = table.stats();
    let mut k = 0;
    loop {
        host.fail_nth_alloc(k);
        let r = op(table);
        let fired = host.clear_failure();
        if let Err(Error::OutOfMemory { .. }) = r {
            assert!(fired, "out of memory without an injected failure");
            assert_eq!(
                host.outstanding_bytes(),
                bytes,
                "failure at allocation {k} leaked"
            );
            assert_eq!(
                table.stats(),
                stats,
                "failure at allocation {k} changed the tree"
            );
            unchanged(table, k);
            k += 1;
            continue;
        }
        assert!(!fired, "an injected failure was swallowed: {r:?}");
        return r;
    }
}
