use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;

use crate::error::{Error, Result};
use crate::nn::Linear;
use crate::unet::UNet2DConditionModel;
use crate::weights::Weights;

/// diffusers' Custom Diffusion attention weights
/// (`pytorch_custom_diffusion_weights.safetensors`): per cross-attention layer, fine-tuned
/// `to_k`/`to_v` (and `to_q`/`to_out` when trained).
///
/// Applying them gives a UNet that shares every other tensor with the base: only the replaced
/// projections take new memory.
pub fn apply_custom_diffusion(
    base: &UNet2DConditionModel,
    path: &Path,
) -> Result<UNet2DConditionModel> {
    // In the UNet's own dtype, so the replaced layers match the rest of the model.
    let w = Weights::open_as(path, &base.conv_in.weight.device(), base.dtype())?;
    // `…attn2.processor.to_k_custom_diffusion.weight` → (`…attn2.to_k`, "weight").
    let mut wanted: HashMap<String, Vec<(String, &'static str)>> = HashMap::new();
    for key in w.keys() {
        let Some((site, rest)) = key.split_once(".processor.") else {
            return Err(Error::invalid(
                "custom diffusion",
                format!(
                    "{}: unexpected key `{key}` (expected `<site>.processor.to_k_custom_diffusion.weight`)",
                    path.display()
                ),
            ));
        };
        let (proj, param) = match rest {
            "to_k_custom_diffusion.weight" => ("to_k", "weight"),
            "to_v_custom_diffusion.weight" => ("to_v", "weight"),
            "to_q_custom_diffusion.weight" => ("to_q", "weight"),
            "to_out_custom_diffusion.0.weight" => ("to_out.0", "weight"),
            "to_out_custom_diffusion.0.bias" => ("to_out.0", "bias"),
            other => {
                return Err(Error::invalid(
                    "custom diffusion",
                    format!("{}: unknown parameter `{other}` in `{key}`", path.display()),
                ));
            }
        };
        wanted
            .entry(format!("{site}.{proj}"))
            .or_default()
            .push((key.clone(), param));
    }
    let mut unet = base.clone();
    let mut error = None;
    let mut applied = 0usize;
    unet.for_each_linear_mut(&mut |p, lin: &mut Linear| {
        if error.is_some() {
            return;
        }
        let Some(entries) = wanted.remove(p) else {
            return;
        };
        for (key, param) in entries {
            let r = if param == "bias" {
                w.tensor::<1>(&key, [lin.d_out()])
                    .map(|b| lin.bias = Some(Param::from_tensor(b)))
            } else {
                w.tensor::<2>(&key, [lin.d_out(), lin.d_in()]).map(|t| {
                    lin.weight = Param::from_tensor(t.transpose());
                })
            };
            if let Err(err) = r {
                error = Some(err);
                return;
            }
        }
        applied += 1;
    });
    if let Some(e) = error {
        return Err(e);
    }
    if let Some(site) = wanted.keys().next() {
        return Err(Error::invalid(
            "custom diffusion",
            format!(
                "{}: no layer `{site}` in this UNet (weights for another model?)",
                path.display()
            ),
        ));
    }
    if applied == 0 {
        return Err(Error::invalid(
            "custom diffusion",
            format!("{}: the file holds no weights", path.display()),
        ));
    }
    Ok(unet)
}
