//! The one place that picks `std` or `loom` atomics, so that the wake-up's protocol
//! ([`crate::bell`]) can be model-checked.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
