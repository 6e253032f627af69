//! Print SD 1.5's attention sites at 512×512 (64×64 latents) as a Markdown table
//! (docs/attention.md is made with it).

use layret::burn::tensor::{DType, Device};
use layret::core::processor::AttentionKind;

fn main() {
    let (unet, _) = layret_benches::sd15_unet(&Device::flex(), DType::F32, 0);
    println!(
        "| # | path | kind | h×w | heads × dim | swapped (docs/method.md) | mask level (16×16) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in unet.sites(64, 64) {
        let kind = if s.kind == AttentionKind::SelfAttention {
            "self"
        } else {
            "cross"
        };
        let swapped = s.path.starts_with("up_blocks") && kind == "self" && s.height >= 32;
        let mask = kind == "cross" && s.height == 16;
        println!(
            "| {} | `{}` | {kind} | {}×{} | {}×{} | {} | {} |",
            s.index,
            s.path,
            s.height,
            s.width,
            s.heads,
            s.head_dim,
            if swapped { "yes" } else { "" },
            if mask { "yes" } else { "" }
        );
    }
}
