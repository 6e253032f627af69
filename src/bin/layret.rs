//! The `layret` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use layret::core::tokenizer::{ClipTokenizer, Truncation};

/// Personalized text-to-image generation with Layout-and-Retouch on Stable Diffusion.
#[derive(Parser, Debug)]
#[command(name = "layret", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the token ids of a prompt (one line, space-separated, BOS/EOS and padding
    /// included), to check how a prompt is split.
    ///
    /// Example: layret tokenize --model tests/fixtures/sd1-tiny "a photo of a sks dog"
    Tokenize {
        /// A diffusers model folder (its tokenizer/ is read) or a tokenizer folder.
        #[arg(long)]
        model: PathBuf,
        /// Truncate prompts over 77 tokens instead of failing.
        #[arg(long)]
        truncate: bool,
        /// Print only the prompt's own tokens (no BOS/EOS, no padding).
        #[arg(long)]
        no_special: bool,
        /// The prompt.
        prompt: String,
    },
    /// Layout-and-Retouch personalized generation (not implemented yet: this build has the
    /// tokenizer and text encoder; the UNet, VAE and pipeline land in later releases).
    Generate {
        /// Anything; the command is not implemented yet.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn run(cli: Cli) -> layret::Result<()> {
    match cli.command {
        Command::Tokenize {
            model,
            truncate,
            no_special,
            prompt,
        } => {
            let tok = ClipTokenizer::from_model_dir(&model)?;
            let ids = if no_special {
                tok.encode_phrase(&prompt)?
            } else {
                let policy = if truncate {
                    Truncation::Truncate
                } else {
                    Truncation::Error
                };
                tok.encode_with(&prompt, policy)?
            };
            let line: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("{}", line.join(" "));
            Ok(())
        }
        Command::Generate { .. } => Err(layret::Error::invalid(
            "command",
            "`layret generate` is not implemented yet in this build (the UNet, VAE and \
             Layout-and-Retouch pipeline are still to land); `layret tokenize` works",
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
