//! The `layret` command line.

mod progress;
mod sites;
mod tokenize;
mod txt2img;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Personalized text-to-image generation with Layout-and-Retouch on Stable Diffusion 1.x/2.x.
///
/// Models are diffusers folders (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
/// scheduler/) with .safetensors weights. The committed fixture tests/fixtures/sd1-tiny is a
/// tiny random model to try every command offline.
#[derive(Parser, Debug)]
#[command(name = "layret", version, about, long_about)]
struct Cli {
    /// No progress bars or notes on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Txt2img(txt2img::Args),
    Tokenize(tokenize::Args),
    Sites(sites::Args),
    /// Layout-and-Retouch personalized generation (not implemented yet: this build has the
    /// Stable Diffusion stack; the method's stages land next).
    Generate {
        /// Ignored until the command lands.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn run(cli: Cli) -> layret::Result<()> {
    match cli.command {
        Command::Txt2img(a) => txt2img::run(a, cli.quiet),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Sites(a) => sites::run(a),
        Command::Generate { .. } => Err(layret::Error::invalid(
            "command",
            "`layret generate` is not implemented yet in this build (the Layout-and-Retouch \
             stages are still to land); `layret txt2img` works",
        )),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
