//! query and walk: read-only, in either mode.

use core::ops::ControlFlow;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::{EntryKind, PteFormat};
use crate::host::Host;
use crate::iter::{lookup, Iter};
use crate::mode::Mode;
use crate::table::{Mapping, WalkEntry};

use super::check_range;

/// Translates `gpa`: the leaf that maps it, or `None`.
#[inline]
pub(crate) fn query<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: Gpa,
) -> Result<Option<Mapping>, Error> {
    let geo = fmt.geometry();
    if gpa.raw() >> geo.ia_bits() != 0 {
        return Err(Error::GpaTooWide {
            gpa,
            bits: geo.ia_bits(),
        });
    }
    // SAFETY: `root` is the tree's live root, built with `fmt` on `host`, and `gpa` is within the
    // input width (checked above).
    let (level, raw) = unsafe { lookup::<F, H, M>(fmt, host, root, gpa.raw()) };
    if fmt.classify(raw, level) != EntryKind::Leaf {
        return Ok(None);
    }
    let size = geo.level_size(level);
    let base = fmt.leaf_addr(raw, level);
    Ok(Some(Mapping {
        hpa: Hpa::new(base.raw() + (gpa.raw() & (size - 1))),
        leaf_gpa: Gpa::new(gpa.raw() & !(size - 1)),
        level,
        size,
        attrs: fmt.leaf_attrs(raw, level),
        ad: fmt.ad_state(raw, level),
        raw,
    }))
}

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
