//! Progress of long operations, and how a caller stops them.
//!
//! Every long operation takes a callback `&mut dyn FnMut(StageProgress) -> ControlFlow<()>`:
//! it hears each finished step and answers [`ControlFlow::Break`] to stop the operation at the
//! next step boundary (which then returns [`Error::Cancelled`]); [`ignore_progress`] continues
//! silently.

use std::ops::ControlFlow;

use crate::error::{Error, Result};

/// Progress of one stage of an operation, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageProgress {
    /// What is running ("denoise", "invert", "decode", ...).
    pub stage: &'static str,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
}

/// A progress callback that reports nothing and never stops: `&mut ignore_progress`.
pub fn ignore_progress<T>(_: T) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Report `p` to `progress`; [`Error::Cancelled`] if it asks to stop.
pub fn report(
    progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    p: StageProgress,
) -> Result<()> {
    match progress(p) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::Cancelled {
            stage: p.stage.to_string(),
            step: p.step,
            total: p.total,
        }),
    }
}
