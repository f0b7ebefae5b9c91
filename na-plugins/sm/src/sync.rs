//! The one place that picks `std` or `loom` atomics, so that the ring's protocol can be
//! model-checked (`RUSTFLAGS="--cfg loom" cargo test -p na-sm --release --lib ring::loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
