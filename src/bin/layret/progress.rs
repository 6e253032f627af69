//! Progress bars for the CLI (hidden with --quiet).

use indicatif::{ProgressBar, ProgressStyle};
use layret::core::stable_diffusion::Progress;

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

    /// Feed one progress report.
    pub fn update(&mut self, p: Progress) {
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
