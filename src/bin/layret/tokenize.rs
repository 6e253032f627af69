use std::path::PathBuf;

use layret::core::tokenizer::{ClipTokenizer, Truncation};

/// Print the token ids of a prompt (one line, space-separated; BOS, EOS and padding to 77
/// included), to check how a prompt is split.
///
/// Example: layret tokenize --model tests/fixtures/sd1-tiny "a photo of a sks dog"
#[derive(clap::Args, Debug)]
pub struct Args {
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
}

pub fn run(a: Args) -> layret::Result<()> {
    let tok = ClipTokenizer::from_model_dir(&a.model)?;
    let ids = if a.no_special {
        tok.encode_phrase(&a.prompt)?
    } else {
        let policy = if a.truncate {
            Truncation::Truncate
        } else {
            Truncation::Error
        };
        tok.encode_with(&a.prompt, policy)?
    };
    let line: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("{}", line.join(" "));
    Ok(())
}
