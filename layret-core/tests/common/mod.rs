//! The shared test helpers (`layret-test-support`): fixture paths, golden tensors, NaN-safe
//! comparisons, unique temporary folders.
#![allow(unused_imports)]

pub use layret_test_support::*;
