use std::path::PathBuf;

use layret::burn::tensor::Device;
use layret::core::weights::Weights;

/// Describe a model folder without loading it: versions, configs, parameter counts, dtypes and
/// file sizes of each component.
///
/// Example: layret inspect --model tests/fixtures/sd1-tiny
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A diffusers folder or a Hugging Face repo id in the local cache.
    #[arg(long)]
    model: String,
}

pub fn run(a: Args) -> layret::Result<()> {
    let dir: PathBuf = layret::model_path::resolve_model(&a.model)?;
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
            if name.ends_with(".safetensors") {
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
