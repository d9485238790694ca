//! Fuzz support.
