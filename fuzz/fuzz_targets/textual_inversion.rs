//! Textual-inversion files from arbitrary bytes: load, then apply to the tiny model's
//! tokenizer and text encoder.
#![no_main]

use std::sync::OnceLock;

use burn::tensor::{DType, Device};
use layret_core::clip::ClipTextEncoder;
use layret_core::personalization::TextualInversion;
use layret_core::tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

fn model() -> &'static (ClipTokenizer, ClipTextEncoder) {
    static M: OnceLock<(ClipTokenizer, ClipTextEncoder)> = OnceLock::new();
    M.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd1-tiny");
        let tok = ClipTokenizer::from_model_dir(dir).expect("tokenizer");
        let te = ClipTextEncoder::from_dir(&std::path::Path::new(dir).join("text_encoder"), &Device::flex(), DType::F32, None)
            .expect("text encoder")
            .0;
        (tok, te)
    })
}

fuzz_target!(|data: &[u8]| {
    let f = std::env::temp_dir().join(format!("layret-fuzz-ti-{}.safetensors", std::process::id()));
    if std::fs::write(&f, data).is_err() {
        return;
    }
    if let Ok(ti) = TextualInversion::load(&f, Some("<fuzz>"), &Device::flex()) {
        if ti.num_vectors() <= 64 {
            let (tok, te) = model();
            let mut tok = tok.clone();
            if let Ok(te2) = ti.apply(&mut tok, te) {
                let _ = tok.encode("a <fuzz> dog").map(|ids| te2.encode(&[ids], 0));
            }
        }
    }
});
