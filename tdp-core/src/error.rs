//! The one error type of the explicit table API.

use core::fmt;

use crate::addr::{Gpa, Hpa, Level};
use crate::format::Attrs;

/// Why an operation was refused. Every error leaves the table as it was, with nothing leaked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A range of size zero.
    EmptyRange {
        /// Its start.
        gpa: Gpa,
    },
    /// A range whose end does not fit in 64 bits.
    RangeOverflow {
        /// Its start.
        gpa: Gpa,
        /// Its size.
        size: u64,
    },
    /// A guest-physical address or size not aligned to the page size.
    UnalignedGpa {
        /// The offending value.
        value: u64,
        /// The required alignment.
        align: u64,
    },
    /// A host-physical address not aligned to the page size.
    UnalignedHpa {
        /// The offending address.
        hpa: Hpa,
        /// The required alignment.
        align: u64,
    },
    /// A guest-physical address beyond the configured input width.
    GpaTooWide {
        /// The highest address of the request.
        gpa: Gpa,
        /// The configured width.
        bits: u8,
    },
    /// A host-physical address beyond the configured output width.
    HpaTooWide {
        /// The highest address of the request.
        hpa: Hpa,
        /// The configured width.
        bits: u8,
    },
    /// The range is already (partly) mapped.
    AlreadyMapped {
        /// The first mapped address found.
        gpa: Gpa,
    },
    /// A level this geometry does not have, or one that cannot hold a leaf.
    InvalidLevel {
        /// The offending level.
        level: Level,
    },
    /// Attributes the format cannot encode.
    UnsupportedAttrs {
        /// The offending attributes.
        attrs: Attrs,
    },
    /// The host could not provide a table page.
    OutOfMemory {
        /// Size of the table that could not be allocated.
        size: usize,
    },
    /// Shared mode: another updater kept an entry this operation needs frozen for longer than the
    /// operation's retry bound (or the entry kept changing). Nothing after `gpa` was changed by this
    /// call; what it did before `gpa` stays done and its flush has been issued or queued. Retry the
    /// call (KVM returns `RET_PF_RETRY` and lets the vCPU fault again).
    Retry {
        /// Where the operation stopped.
        gpa: Gpa,
    },
    /// A [`crate::TableCache`] made for another geometry was passed to an operation.
    CacheMismatch,
    /// An invalid geometry or configuration.
    InvalidGeometry,
    /// A configuration value the architecture does not allow.
    InvalidConfig {
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyRange { gpa } => write!(f, "empty range at {gpa}"),
            Error::RangeOverflow { gpa, size } => {
                write!(f, "range {gpa} + {size:#x} overflows 64 bits")
            }
            Error::UnalignedGpa { value, align } => {
                write!(
                    f,
                    "guest address or size {value:#x} is not {align:#x}-aligned"
                )
            }
            Error::UnalignedHpa { hpa, align } => {
                write!(f, "host address {hpa} is not {align:#x}-aligned")
            }
            Error::GpaTooWide { gpa, bits } => {
                write!(
                    f,
                    "guest address {gpa} is beyond the {bits}-bit input width"
                )
            }
            Error::HpaTooWide { hpa, bits } => {
                write!(
                    f,
                    "host address {hpa} is beyond the {bits}-bit output width"
                )
            }
            Error::AlreadyMapped { gpa } => write!(f, "{gpa} is already mapped"),
            Error::InvalidLevel { level } => write!(f, "level {level} cannot be used here"),
            Error::UnsupportedAttrs { attrs } => {
                write!(f, "attributes {attrs:?} cannot be encoded")
            }
            Error::OutOfMemory { size } => write!(f, "out of table memory ({size} bytes)"),
            Error::Retry { gpa } => write!(f, "contended entry at {gpa}: retry"),
            Error::CacheMismatch => write!(f, "table cache made for another geometry"),
            Error::InvalidGeometry => write!(f, "invalid geometry"),
            Error::InvalidConfig { what, value } => write!(f, "invalid {what}: {value:#x}"),
        }
    }
}

impl core::error::Error for Error {}
