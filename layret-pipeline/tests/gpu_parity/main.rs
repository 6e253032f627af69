//! The wgpu parity set as one test binary, for a lent GPU machine that cannot build (the
//! `device` tool carries at most 64 MiB: one binary instead of six). Each module is one of the
//! CPU suites, unchanged (`#[path]`); tools/gpu/bundle.sh builds it and
//! tools/gpu/device_check.sh runs it with `LAYRET_TEST_DEVICE=wgpu`, `device_reads` alone (its
//! counter is per process). Built only with the `gpu-parity` feature, so `cargo test` does
//! not run the suites twice.

#[path = "../../../layret-core/tests/unet.rs"]
mod unet;

#[path = "../../../layret-core/tests/vae.rs"]
mod vae;

#[path = "../../../layret-core/tests/clip_text_encoder.rs"]
mod clip_text_encoder;

#[path = "../../../layret-core/tests/pipeline.rs"]
mod pipeline;

#[path = "../method.rs"]
mod method;

#[path = "../device_reads.rs"]
mod device_reads;
