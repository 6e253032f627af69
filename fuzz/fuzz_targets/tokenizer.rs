//! The CLIP tokenizer: arbitrary prompts through the real vocabulary, and arbitrary
//! vocab.json/merges.txt pairs (split at the first NUL byte) loaded and used.
#![no_main]

use std::sync::OnceLock;

use layret_core::tokenizer::{ClipTokenizer, Truncation};
use libfuzzer_sys::fuzz_target;

fn real() -> &'static ClipTokenizer {
    static T: OnceLock<ClipTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        ClipTokenizer::from_model_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd1-tiny"))
            .expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let t = real();
        let _ = t.encode(text);
        if let Ok(ids) = t.encode_with(text, Truncation::Truncate) {
            assert_eq!(ids.len(), 77);
        }
    }
    if let Some(split) = data.iter().position(|&b| b == 0) {
        let dir = std::env::temp_dir().join(format!("layret-fuzz-tok-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("vocab.json"), &data[..split]);
        let _ = std::fs::write(dir.join("merges.txt"), &data[split + 1..]);
        if let Ok(t) = ClipTokenizer::from_dir(&dir) {
            let _ = t.encode("a photo of a dog");
        }
    }
});
