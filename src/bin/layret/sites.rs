use burn::tensor::Device;
use layret::burn;
use layret::core::processor::AttentionKind;
use layret::core::unet::UNet2DConditionModel;

/// List the UNet's attention sites in execution order: path, kind, h×w, heads × head dim
/// (the ids processors are routed by).
///
/// Example: layret sites --model tests/fixtures/sd1-tiny
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A diffusers model folder, or a Hugging Face repo id found in the local cache.
    #[arg(long)]
    model: String,
    /// Image width for the sizes (default: the model's own size).
    #[arg(long)]
    width: Option<usize>,
    /// Image height for the sizes (default: the model's own size).
    #[arg(long)]
    height: Option<usize>,
}

pub fn run(a: Args) -> layret::Result<()> {
    let model = layret::model_path::resolve_model(&a.model)?;
    layret::core::stable_diffusion::check_model_dir(&model)?;
    let dir = model.join("unet");
    let (unet, cfg) =
        UNet2DConditionModel::from_dir(&dir, &Device::flex(), burn::tensor::DType::F32, None)?;
    let vae_cfg = layret::core::vae::VaeConfig::from_file(&model.join("vae/config.json"))?;
    let f = vae_cfg.downsample_factor();
    let default = cfg.sample_size.unwrap_or(64) * f;
    let (w, h) = (a.width.unwrap_or(default), a.height.unwrap_or(default));
    for (name, v) in [("width", w), ("height", h)] {
        if v == 0 || v % f != 0 {
            return Err(layret::Error::invalid(
                name,
                format!("{v}; must be a positive multiple of {f}"),
            ));
        }
    }
    for s in unet.sites(h / f, w / f) {
        let kind = match s.kind {
            AttentionKind::SelfAttention => "self",
            AttentionKind::CrossAttention => "cross",
        };
        println!(
            "{}\t{}\t{}x{}\t{}x{}",
            s.path, kind, s.height, s.width, s.heads, s.head_dim
        );
    }
    Ok(())
}
