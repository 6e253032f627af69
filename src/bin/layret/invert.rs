use std::path::PathBuf;

use layret::burn::tensor::Tensor;
use layret::core::noise::save_tensors;
use layret::core::processor::DefaultAttention;

use crate::model_args::ModelArgs;
use layret::pipeline::load_reference_tensor;

use crate::progress::Bars;

/// DDIM-invert an image to its noise (docs/method.md's inversion): VAE mean × scaling factor, then
/// N inversion steps with the prompt, no guidance. Writes the noisiest latent (key `noise`,
/// [1, 4, H/8, W/8], usable as `--noise`) and the whole trajectory (key `trajectory`).
///
/// Example: layret invert --model tests/fixtures/sd1-tiny --image photo.png --prompt "a photo of a dog"
///          --steps 10 --width 128 --height 128 --out noise.safetensors
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The image (8-bit RGB; center-cropped and resized to the size).
    #[arg(long)]
    image: PathBuf,
    /// The prompt the inversion conditions on.
    #[arg(long, default_value = "")]
    prompt: String,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Width (default: the model's size).
    #[arg(long)]
    width: Option<usize>,
    /// Height (default: the model's size).
    #[arg(long)]
    height: Option<usize>,
    /// Output safetensors file.
    #[arg(long, default_value = "noise.safetensors")]
    out: PathBuf,
}

pub fn run(a: Args, quiet: bool) -> layret::Result<()> {
    let device = a.model.device()?;
    let (_, sd) = a.model.load(&device)?;
    let size = sd.default_size();
    let (w, h) = (a.width.unwrap_or(size), a.height.unwrap_or(size));
    sd.latent_size(w, h)?;
    let image = load_reference_tensor(&a.image, w, h, &device)?;
    let x = sd.encode_image(image)?;
    let mut bars = Bars::new(quiet);
    let traj = sd.invert(x, &a.prompt, a.steps, &mut DefaultAttention, &mut |p| {
        bars.update(p)
    })?;
    bars.finish();
    let noise = traj
        .last()
        .map(|(_, z)| z.clone())
        .ok_or_else(|| layret::Error::invalid("steps", "no step ran"))?;
    let all: Tensor<4> = Tensor::cat(traj.iter().map(|(_, z)| z.clone()).collect(), 0);
    save_tensors(&a.out, &[("noise", noise), ("trajectory", all)])?;
    if !quiet {
        println!("{}", a.out.display());
    }
    Ok(())
}
