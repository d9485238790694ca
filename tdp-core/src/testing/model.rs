//! The reference model: what every guest address should translate to.

use std::collections::BTreeMap;
use std::vec::Vec;

use crate::format::{Attrs, Perms};

/// One mapped span of the model.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ModelSpan {
    /// One past the last guest address.
    pub end: u64,
    /// Host address of the first byte.
    pub hpa: u64,
    /// Attributes.
    pub attrs: Attrs,
}

/// A map from guest ranges to host ranges and attributes, with the explicit API's semantics
/// written as plainly as possible (no tables, no levels).
#[derive(Clone, Debug, Default)]
pub struct Model {
    spans: BTreeMap<u64, ModelSpan>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Model {
        Model::default()
    }

    /// The first mapped address in `[start, start + size)`.
    pub fn first_mapped(&self, start: u64, size: u64) -> Option<u64> {
        let end = start + size;
        if let Some((&s, span)) = self.spans.range(..=start).next_back() {
            if span.end > start {
                return Some(start.max(s));
            }
        }
        self.spans.range(start..end).next().map(|(&s, _)| s)
    }

    /// Maps `[start, start + size)` to `hpa`.
    ///
    /// # Errors
    /// The first mapped address, if any of the range is mapped (the model is then unchanged).
    pub fn map(&mut self, start: u64, size: u64, hpa: u64, attrs: Attrs) -> Result<(), u64> {
        if let Some(a) = self.first_mapped(start, size) {
            return Err(a);
        }
        self.spans.insert(
            start,
            ModelSpan {
                end: start + size,
                hpa,
                attrs,
            },
        );
        Ok(())
    }

    /// Cuts spans so that `at` starts a span if it is mapped.
    fn cut(&mut self, at: u64) {
        if let Some((&s, span)) = self.spans.range(..at).next_back() {
            if span.end > at {
                let span = *span;
                self.spans.insert(s, ModelSpan { end: at, ..span });
                self.spans.insert(
                    at,
                    ModelSpan {
                        hpa: span.hpa + (at - s),
                        ..span
                    },
                );
            }
        }
    }

    fn inner_keys(&mut self, start: u64, size: u64) -> Vec<u64> {
        self.cut(start);
        self.cut(start + size);
        self.spans
            .range(start..start + size)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Removes every mapping in `[start, start + size)`.
    pub fn unmap(&mut self, start: u64, size: u64) {
        for k in self.inner_keys(start, size) {
            self.spans.remove(&k);
        }
    }

    /// Sets the permissions of every mapping in `[start, start + size)`.
    pub fn protect(&mut self, start: u64, size: u64, perms: Perms) {
        for k in self.inner_keys(start, size) {
            if let Some(span) = self.spans.get_mut(&k) {
                span.attrs.perms = perms;
            }
        }
    }

    /// What `gpa` translates to.
    pub fn translate(&self, gpa: u64) -> Option<(u64, Attrs)> {
        let (&s, span) = self.spans.range(..=gpa).next_back()?;
        (span.end > gpa).then(|| (span.hpa + (gpa - s), span.attrs))
    }

    /// The spans, in address order.
    pub fn spans(&self) -> impl Iterator<Item = (u64, &ModelSpan)> {
        self.spans.iter().map(|(&s, span)| (s, span))
    }

    /// Bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.spans.iter().map(|(&s, span)| span.end - s).sum()
    }
}
