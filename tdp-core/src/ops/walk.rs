//! walk: read-only, in either mode (single-address lookups are in [`super::single`]).

use core::ops::ControlFlow;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::PteFormat;
use crate::host::Host;
use crate::iter::Iter;
use crate::mode::Mode;
use crate::table::WalkEntry;

use super::check_range;

/// Visits every entry that maps part of `range` in pre-order until the visitor breaks.
pub(crate) fn walk<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    range: GpaRange,
    mut visitor: impl FnMut(&WalkEntry) -> ControlFlow<()>,
) -> Result<(), Error> {
    let (start, last) = check_range(fmt.geometry(), range)?;
    // SAFETY: `root` is the tree's live root; `start <= last` within the input width (checked);
    // tables are not freed while the walk runs (exclusive: nothing else runs; shared: the
    // caller's read-side section).
    let mut it = unsafe { Iter::<F, H, M>::new(fmt, host, root, start, last, Level::LEAF) };
    while it.valid() {
        let e = WalkEntry {
            gpa: Gpa::new(it.gpa()),
            level: it.level(),
            raw: it.old(),
            kind: it.kind(),
            visit: it.visit(),
        };
        if visitor(&e).is_break() {
            break;
        }
        it.next();
    }
    Ok(())
}
