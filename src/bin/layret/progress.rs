//! Progress bars for the CLI (hidden with --quiet).

use indicatif::{ProgressBar, ProgressStyle};
use layret::core::stable_diffusion::Progress;

/// One bar per stage, replaced when the stage changes.
pub struct Bars {
    quiet: bool,
    current: Option<(&'static str, ProgressBar)>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            current: None,
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
                "{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(p.stage);
            self.current = Some((p.stage, bar));
        }
        if let Some((_, bar)) = &self.current {
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
