//! The INVTLB operations a [`TlbFlush`] needs (LoongArch Vol. 1, INVTLB; the LVZ op numbers
//! are Linux's `enum invtlb_ops` in `asm/tlb.h`, and the GID operand is what KVM passes:
//! `read_csr_gstat() & CSR_GSTAT_GID`, i.e. the GID in bits 23:16 of rj).

use tdp_core::{PteFormat, TlbFlush};

use crate::LoongArch;

/// INVTLB op 0x14: invalidate the GPA→HPA entries of the GID in rj.
pub const INVTLB_GID_GPA_TO_HPA: u8 = 0x14;
/// INVTLB op 0x15: invalidate every entry (GVA→GPA and GPA→HPA) of the GID in rj.
pub const INVTLB_GID_ALL: u8 = 0x15;
/// INVTLB op 0x16: invalidate the GPA→HPA entries of the GID in rj that match the address in
/// rk (the entry covering an even/odd pair, or a whole huge page).
pub const INVTLB_GID_ADDR: u8 = 0x16;

/// GSTAT.GID is bits 23:16 (`CSR_GSTAT_GID_SHIFT`).
const GID_SHIFT: u32 = 16;

/// One `INVTLB op, rj, rk`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Invtlb {
    /// The operation.
    pub op: u8,
    /// rj: the GID in bits 23:16.
    pub rj: u64,
    /// rk: the guest-physical address (0 when the op takes none).
    pub rk: u64,
}

/// The INVTLB operations of one flush, in address order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvtlbOps {
    op: u8,
    rj: u64,
    next: u64,
    stride: u64,
    remaining: u64,
}

impl Iterator for InvtlbOps {
    type Item = Invtlb;

    fn next(&mut self) -> Option<Invtlb> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rk = self.next;
        self.next = self.next.wrapping_add(self.stride);
        Some(Invtlb {
            op: self.op,
            rj: self.rj,
            rk,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, usize::try_from(self.remaining).ok())
    }
}

impl LoongArch {
    /// The INVTLB operations that carry out `flush` for the VM with guest ID `gid`, on one CPU
    /// (remote CPUs are the host's business). A pure function.
    ///
    /// - [`TlbFlush::Range`]: op 0x16 (`INVTLB_GID_ADDR`) at every even/odd pair the range
    ///   touches: a TLB entry covers a pair of pages, so the addresses are aligned to
    ///   2 × page size (KVM `kvm_flush_tlb_gpa`: `gpa &= PAGE_MASK << 1`). A huge page's entry
    ///   matches any of those addresses. The `level` hint is not used: stepping by page pairs
    ///   covers whatever was cached, including small invalid pairs loaded through the invalid
    ///   tables before a huge leaf was mapped there (the engine gives no hint in that case).
    ///   More than `max_by_address` operations become one op 0x14
    ///   (`INVTLB_GID_GPA_TO_HPA`, every GPA→HPA entry of the GID). No walk cache is
    ///   architected, so `tables` needs nothing more (inferred).
    /// - [`TlbFlush::All`]: op 0x15 (`INVTLB_GID_ALL`).
    pub fn invtlb(&self, flush: TlbFlush, gid: u8, max_by_address: u64) -> InvtlbOps {
        let rj = u64::from(gid) << GID_SHIFT;
        let whole = |op| InvtlbOps {
            op,
            rj,
            next: 0,
            stride: 0,
            remaining: 1,
        };
        match flush {
            TlbFlush::All => whole(INVTLB_GID_ALL),
            TlbFlush::Range { start, size, .. } => {
                let stride = 2 * self.geometry().page_size();
                if size == 0 {
                    return InvtlbOps {
                        op: INVTLB_GID_ADDR,
                        rj,
                        next: 0,
                        stride,
                        remaining: 0,
                    };
                }
                let first = start.raw() & !(stride - 1);
                let last = start.raw().saturating_add(size - 1) & !(stride - 1);
                let count = (last - first) / stride + 1;
                if count > max_by_address {
                    return whole(INVTLB_GID_GPA_TO_HPA);
                }
                InvtlbOps {
                    op: INVTLB_GID_ADDR,
                    rj,
                    next: first,
                    stride,
                    remaining: count,
                }
            }
        }
    }
}
