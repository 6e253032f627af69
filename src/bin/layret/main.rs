//! The `layret` command line.

mod batch;
mod cancel;
mod eval;
mod generate;
mod inspect;
mod invert;
mod model_args;
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
#[allow(clippy::large_enum_variant)]
enum Command {
    Txt2img(txt2img::Args),
    Tokenize(tokenize::Args),
    Sites(sites::Args),
    Generate(generate::Args),
    Batch(batch::Args),
    Eval(eval::Args),
    Invert(invert::Args),
    Inspect(inspect::Args),
}

fn run(cli: Cli) -> layret::Result<()> {
    match cli.command {
        Command::Txt2img(a) => txt2img::run(a, cli.quiet),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Sites(a) => sites::run(a),
        Command::Generate(a) => generate::run(a, cli.quiet),
        Command::Batch(a) => batch::run(a, cli.quiet),
        Command::Eval(a) => eval::run(a, cli.quiet),
        Command::Invert(a) => invert::run(a, cli.quiet),
        Command::Inspect(a) => inspect::run(a),
    }
}

fn main() -> ExitCode {
    cancel::install();
    layret::allocator::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ layret::Error::Cancelled { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
