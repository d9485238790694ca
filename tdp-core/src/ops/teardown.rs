//! teardown: clear the whole tree (exclusive mode only).

use crate::addr::{Hpa, Level};
use crate::entry::EntryPtr;
use crate::flush::{Delta, Pending};
use crate::format::{EntryKind, PteFormat};
use crate::host::{Host, TlbFlush};
use crate::mode::Exclusive;
use crate::update::{count_add, remove_table, take};

/// Empties every root entry, accounts for and queues every table below (no walk per page: leaf
/// tables are accounted from their counts), and issues one whole-VM flush. The tables are left
/// in `pending` for the caller to release.
pub(crate) fn clear<F: PteFormat, H: Host>(
    fmt: &F,
    host: &H,
    root: Hpa,
    pending: &mut Pending,
    delta: &mut Delta,
) {
    let geo = fmt.geometry();
    let level = geo.root_level();
    let empty = fmt.empty(level);
    let virt = host.phys_to_virt(root);
    // SAFETY: `root` is the tree's live root table.
    let meta = unsafe { host.meta(root).as_ref() };
    // The root's count says how many of its entries are not empty (exact: no other updater runs
    // during a teardown), so the scan stops after the last one.
    let mut left = meta.count();
    let n = geo.entries(level);
    let mut i = 0;
    while left > 0 && i < n {
        // SAFETY: `i` is below the root's entry count.
        let p = unsafe { EntryPtr::new(virt, i) };
        i += 1;
        if p.load(F::BYTE_ORDER) == empty {
            continue;
        }
        left -= 1;
        let old = take::<F>(p, empty, false);
        count_add::<Exclusive>(meta, -1);
        match fmt.classify(old, level) {
            EntryKind::Table => {
                let child = fmt.table_addr(old, level);
                let cl = Level::from_index(level.index() - 1);
                remove_table::<F, H, Exclusive>(fmt, host, child, cl, false, pending, delta);
            }
            EntryKind::Leaf => delta.leaves[level.index()] -= 1,
            _ => {}
        }
    }
    meta.flags.store(0, crate::sync::Ordering::Relaxed);
    host.flush_tlb(TlbFlush::All);
}
