use std::path::PathBuf;

use layret::eval::{EvalSet, Evaluator, comparison_table};
use layret::{Error, Result};

use crate::progress::Bars;

/// Score generated images as the DreamBooth/DreamBench protocol does: CLIP-T (prompt
/// fidelity, with the personal phrase replaced by the class), CLIP-I and DINO (identity: mean
/// cosine to the reference photos), diversity (pairwise 1 − cosine of DINO features per prompt)
/// and layout diversity (pairwise 1 − IoU of the saved subject masks). Writes scores.json and
/// scores.md into each folder and prints the table; with several folders, also one table side
/// by side. docs/evaluation.md says what each score means.
///
/// A layret generate folder is read through its manifest.json; for a folder made elsewhere
/// (e.g. txt2img), pass --prompts, --references, --phrase and --class (images named
/// p<P>_s<K>.png, or any images with a single prompt).
///
/// Examples:
///   layret eval out --clip openai/clip-vit-large-patch14 --dino facebook/dino-vits16
///   layret eval runs/layout-and-retouch runs/personalized-only --prompts "a sks dog on the beach"
///     --references dog/00.jpg --phrase "sks dog" --class dog
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folders of generated images.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// The CLIP model: a Hugging Face folder or a repo id in the local cache.
    #[arg(long, default_value = "openai/clip-vit-large-patch14")]
    clip: String,
    /// The DINO model (a ViTModel): a folder or a cached repo id.
    #[arg(long, default_value = "facebook/dino-vits16")]
    dino: String,
    /// For folders without a manifest: the prompts, in order (repeatable).
    #[arg(long)]
    prompts: Vec<String>,
    /// For folders without a manifest: the reference photos (repeatable).
    #[arg(long)]
    references: Vec<PathBuf>,
    /// For folders without a manifest: the personal phrase in the prompts.
    #[arg(long)]
    phrase: Option<String>,
    /// For folders without a manifest: the class phrase.
    #[arg(long = "class")]
    class_phrase: Option<String>,
    /// cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: Args, quiet: bool) -> Result<()> {
    let device = layret::device::parse_device(&a.device)?;
    // Every folder is read before the models load: a bad folder fails fast.
    let sets = a
        .dirs
        .iter()
        .map(|dir| {
            if dir.join(layret::manifest::FILE_NAME).is_file() {
                return EvalSet::from_run(dir);
            }
            if !dir.is_dir() {
                return Err(Error::MissingFile {
                    what: "folder of generated images".into(),
                    path: dir.clone(),
                });
            }
            match (&a.phrase, &a.class_phrase, a.prompts.is_empty(), a.references.is_empty()) {
                (Some(p), Some(c), false, false) => EvalSet::from_folder(
                    dir,
                    a.prompts.clone(),
                    p.clone(),
                    c.clone(),
                    a.references.clone(),
                ),
                _ => Err(Error::invalid(
                    "eval",
                    format!(
                        "{} has no manifest.json (not a layret generate folder): pass --prompts, --references, --phrase and --class",
                        dir.display()
                    ),
                )),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let clip = layret::model_path::resolve_model(&a.clip)?;
    let dino = layret::model_path::resolve_model(&a.dino)?;
    let mut bars = Bars::new(quiet);
    let t0 = std::time::Instant::now();
    let evaluator = Evaluator::load(&clip, &dino, &device)?;
    bars.note(&format!(
        "loaded {} and {} in {:.1}s",
        clip.display(),
        dino.display(),
        t0.elapsed().as_secs_f64()
    ));
    let mut all = Vec::new();
    for set in &sets {
        let scores = evaluator.score(set, &mut |p| bars.update(p))?;
        bars.finish();
        scores.write(&set.dir)?;
        println!("{}", scores.markdown());
        all.push(scores);
    }
    if all.len() > 1 {
        println!("{}", comparison_table(&all));
    }
    Ok(())
}
