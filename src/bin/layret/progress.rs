//! Progress bars for the CLI (hidden with --quiet).

use std::ops::ControlFlow;

use indicatif::{ProgressBar, ProgressStyle};
use layret::core::progress::StageProgress;
use layret::pipeline::RequestProgress;

/// One bar per stage, replaced when the stage changes.
pub struct Bars {
    quiet: bool,
    current: Option<(&'static str, ProgressBar)>,
    last_step: Option<std::time::Instant>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            current: None,
            last_step: None,
        }
    }

    /// Feed one progress report; asks to stop once Ctrl-C was pressed.
    pub fn update(&mut self, p: StageProgress) -> ControlFlow<()> {
        self.show(p);
        Self::keep_going()
    }

    /// Whether to go on (no Ctrl-C).
    fn keep_going() -> ControlFlow<()> {
        if crate::cancel::requested() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// One bar for a whole Layout-and-Retouch request (its total known up front), the prompt
    /// and stage in its message; asks to stop once Ctrl-C was pressed.
    pub fn update_request(&mut self, p: RequestProgress) -> ControlFlow<()> {
        if !self.quiet {
            if !matches!(&self.current, Some((s, _)) if *s == "request") {
                self.finish();
                let bar = ProgressBar::new(p.total as u64);
                let style = ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix("steps");
                self.current = Some(("request", bar));
                self.last_step = Some(std::time::Instant::now());
            }
            if let Some((_, bar)) = &self.current {
                let now = std::time::Instant::now();
                let per = self
                    .last_step
                    .replace(now)
                    .map(|prev| now.duration_since(prev).as_secs_f64())
                    .unwrap_or(0.0);
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                bar.set_message(format!(
                    "prompt {}/{} {} {}/{} ({per:.2}s)",
                    p.prompt + 1,
                    p.prompts,
                    p.stage.stage,
                    p.stage.step,
                    p.stage.total
                ));
            }
        }
        Self::keep_going()
    }

    fn show(&mut self, p: StageProgress) {
        if self.quiet {
            return;
        }
        let same = matches!(&self.current, Some((s, _)) if *s == p.stage);
        if !same {
            self.finish();
            let bar = ProgressBar::new(p.total as u64);
            let style = ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} {msg} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(p.stage);
            self.current = Some((p.stage, bar));
            self.last_step = Some(std::time::Instant::now());
        }
        if let Some((_, bar)) = &self.current {
            let now = std::time::Instant::now();
            if let Some(prev) = self.last_step.replace(now) {
                bar.set_message(format!(
                    "{:.2}s/step",
                    now.duration_since(prev).as_secs_f64()
                ));
            }
            bar.set_position(p.step as u64);
        }
    }

    /// A line on stdout (a written file), printed above the bar.
    pub fn println(&mut self, msg: &str) {
        match &self.current {
            Some((_, bar)) if !self.quiet => bar.suspend(|| println!("{msg}")),
            _ => println!("{msg}"),
        }
    }

    /// A message on its own line (suppressed with --quiet).
    pub fn note(&mut self, msg: &str) {
        if !self.quiet {
            match &self.current {
                Some((_, bar)) => bar.println(msg),
                None => eprintln!("{msg}"),
            }
        }
    }

    /// Finish the current bar.
    pub fn finish(&mut self) {
        if let Some((_, bar)) = self.current.take() {
            bar.finish();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
