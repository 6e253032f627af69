use std::path::PathBuf;

use layret::burn::tensor::Device;
use layret::core::weights::Weights;

/// Describe a model without loading it: for a folder, versions, configs, parameter counts,
/// dtypes and file sizes of each component; for a single-file checkpoint, the family layret
/// detects from its tensors, the configs it would use and what it would skip.
///
/// Examples:
///   layret inspect --model tests/fixtures/sd1-tiny
///   layret inspect --model v1-5-pruned-emaonly.safetensors
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A diffusers folder, a single-file checkpoint, or a Hugging Face repo id in the local cache.
    #[arg(long)]
    model: String,
}

/// What a single file holds and how layret would read it.
fn inspect_file(path: &std::path::Path) -> layret::Result<()> {
    use layret::core::single_file::{Family, SingleFileConfigs, detect};
    use layret::core::weights::{FileFormat, TensorFile};
    let file = TensorFile::open(path)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!("file       {}", path.display());
    println!(
        "container  {} ({:.1} MB, {} tensors, {} params, {})",
        match file.format() {
            FileFormat::Safetensors => "safetensors",
            FileFormat::Pickle => "PyTorch pickle (read as data)",
        },
        size as f64 / 1e6,
        file.keys().len(),
        file.parameters(),
        file.dtype_summary()
    );
    let info = detect(&file)?;
    let cfg = SingleFileConfigs::new(&info, None, None)?;
    println!(
        "detected   {} single-file checkpoint (original LDM layout)",
        info.family.name()
    );
    println!(
        "           cross-attention width {}, {} proj_in{}",
        info.cross_attention_dim,
        if info.linear_projection {
            "linear"
        } else {
            "1×1-conv"
        },
        info.openclip_layers
            .map(|n| format!(", OpenCLIP text tower with {n} resblocks (the last unused)"))
            .unwrap_or_default()
    );
    println!(
        "tensors    UNet {}, VAE {}, text encoder {}; {} non-model keys skipped (EMA, DDPM buffers, …)",
        info.counts.0, info.counts.1, info.counts.2, info.skipped
    );
    println!(
        "configs    UNet {:?} heads {:?}, default size {} px, prediction {:?}{}",
        cfg.unet.block_out_channels,
        cfg.unet
            .levels()
            .iter()
            .map(|l| l.heads)
            .collect::<Vec<_>>(),
        cfg.unet.sample_size.unwrap_or(64) * 8,
        cfg.scheduler.prediction_type,
        match (info.family, info.global_step) {
            (Family::Sd2, Some(s)) => format!(" (global_step {s}; --prediction-type overrides)"),
            (Family::Sd2, None) => " (SD 2.x files do not say; --prediction-type overrides)".into(),
            _ => String::new(),
        }
    );
    if cfg.unet.cross_attention_dim != info.cross_attention_dim
        || cfg.unet.use_linear_projection != info.linear_projection
    {
        println!(
            "note       the standard {} configs do not fit these tensors (a non-standard architecture): load it with --config DIR (a diffusers folder of its configs)",
            info.family.name()
        );
    }
    println!("tokenizer  the built-in CLIP BPE vocabulary (49408 tokens)");
    Ok(())
}

pub fn run(a: Args) -> layret::Result<()> {
    let dir: PathBuf = layret::model_path::resolve_model(&a.model)?;
    if dir.is_file() {
        return inspect_file(&dir);
    }
    layret::core::stable_diffusion::check_model_dir(&dir)?;
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model_index.json"))
            .map_err(|e| layret::Error::io("reading", dir.join("model_index.json"), e))?,
    )
    .map_err(|e| layret::Error::Config {
        file: dir.join("model_index.json"),
        message: e.to_string(),
    })?;
    println!("model      {}", dir.display());
    println!(
        "pipeline   {} (diffusers {})",
        index["_class_name"].as_str().unwrap_or("?"),
        index["_diffusers_version"].as_str().unwrap_or("?")
    );
    let mut total = 0usize;
    for comp in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        let cdir = dir.join(comp);
        println!("\n[{comp}]");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(|e| layret::Error::io("listing", &cdir, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".safetensors") || name.ends_with(".bin") {
                let w = Weights::open(&f, &Device::flex())?;
                let params: usize = w
                    .keys()
                    .iter()
                    .filter_map(|k| w.shape_of(k))
                    .map(|s| s.iter().product::<usize>())
                    .sum();
                total += params;
                println!(
                    "  {name:<44} {:>10.1} MB  {:>6} tensors  {:>12} params  {}",
                    size as f64 / 1e6,
                    w.keys().len(),
                    params,
                    w.dtype_summary()
                );
            } else if name.ends_with(".json") && name != "vocab.json" && name != "tokenizer.json" {
                let text =
                    std::fs::read_to_string(&f).map_err(|e| layret::Error::io("reading", &f, e))?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| layret::Error::Config {
                        file: f.clone(),
                        message: e.to_string(),
                    })?;
                let keys = [
                    "block_out_channels",
                    "cross_attention_dim",
                    "attention_head_dim",
                    "use_linear_projection",
                    "hidden_size",
                    "num_hidden_layers",
                    "hidden_act",
                    "latent_channels",
                    "scaling_factor",
                    "prediction_type",
                    "timestep_spacing",
                    "sample_size",
                    "model_max_length",
                    "pad_token",
                ];
                let summary: Vec<String> = keys
                    .iter()
                    .filter_map(|k| v.get(*k).map(|x| format!("{k}={x}")))
                    .collect();
                println!(
                    "  {name:<44} {:>10.1} kB  {}",
                    size as f64 / 1e3,
                    summary.join(" ")
                );
            } else {
                println!("  {name:<44} {:>10.1} kB", size as f64 / 1e3);
            }
        }
    }
    println!("\nparameters {total} ({:.1} M)", total as f64 / 1e6);
    Ok(())
}
