//! Parity of `ClipTokenizer` with transformers' `CLIPTokenizer` on the real CLIP vocabulary.

mod common;

use layret_core::Error;
use layret_core::tokenizer::{ClipTokenizer, Truncation};
use serde_json::Value;

fn check_model(name: &str) {
    let dir = common::fixtures().join(name);
    let tok = ClipTokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.vocab_size(), 49408);
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join(format!("golden/tokenizer_{name}.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        tok.pad_id() as u64,
        golden["pad_token_id"].as_u64().unwrap()
    );
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "need at least 30 golden prompts");
    let mut too_long = 0;
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let n = case["untruncated_len"].as_u64().unwrap() as usize;
        assert_eq!(
            tok.token_count(prompt).unwrap(),
            n,
            "token count of {prompt:?}"
        );
        if n > 77 {
            too_long += 1;
            match tok.encode(prompt) {
                Err(Error::PromptTooLong { tokens, max, .. }) => {
                    assert_eq!((tokens, max), (n, 77));
                }
                other => panic!("{prompt:?}: expected PromptTooLong, got {other:?}"),
            }
            assert_eq!(
                tok.encode_with(prompt, Truncation::Truncate).unwrap(),
                want,
                "{prompt:?}"
            );
        } else {
            assert_eq!(tok.encode(prompt).unwrap(), want, "{name}: {prompt:?}");
        }
    }
    assert!(
        too_long >= 1,
        "the goldens must include an over-long prompt"
    );
    for ph in golden["phrases"].as_array().unwrap() {
        let want: Vec<u32> = ph["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode_phrase(ph["phrase"].as_str().unwrap()).unwrap(),
            want
        );
    }
}

#[test]
fn sd1_vocab_and_merges_match_transformers() {
    check_model("sd1-tiny");
}

#[test]
fn sd2_tokenizer_json_matches_transformers() {
    check_model("sd2-tiny");
}

#[test]
fn both_file_layouts_give_the_same_ids() {
    // sd2-tiny has only tokenizer.json; sd1-tiny only vocab.json/merges.txt of the same
    // vocabulary. Pair sd1's files with sd2's config (pad "!") and compare.
    let src = common::fixtures().join("sd2-tiny/tokenizer");
    let tmp_guard = common::tempdir();
    let tmp = tmp_guard.path();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(
            common::fixtures().join("sd1-tiny/tokenizer").join(f),
            tmp.join(f),
        )
        .unwrap();
    }
    std::fs::copy(
        src.join("tokenizer_config.json"),
        tmp.join("tokenizer_config.json"),
    )
    .unwrap();
    let a = ClipTokenizer::from_dir(&src).unwrap();
    let b = ClipTokenizer::from_dir(tmp).unwrap();
    for p in [
        "a photo of a sks dog",
        "東京の犬 🐶 café",
        "what's   up\tdoc?",
    ] {
        assert_eq!(a.encode(p).unwrap(), b.encode(p).unwrap(), "{p:?}");
    }
}

#[test]
fn added_tokens_get_new_ids() {
    let mut tok = ClipTokenizer::from_model_dir(common::fixtures().join("sd1-tiny")).unwrap();
    let ids = tok.add_tokens(&["<cat-toy>"]).unwrap();
    assert_eq!(ids, vec![49408]);
    // As transformers: the added token matches on normalized (lower-cased) text.
    for p in ["a <cat-toy> on a beach", "a <CAT-TOY> on a beach"] {
        assert_eq!(
            tok.encode_phrase(p).unwrap(),
            vec![320, 49408, 525, 320, 2117],
            "{p}"
        );
    }
    match tok.add_tokens(&["dog</w>"]) {
        Err(Error::Tokenizer { message, .. }) => assert!(message.contains("already")),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn missing_tokenizer_files_are_named() {
    let tmp_guard = common::tempdir();
    let tmp = tmp_guard.path();
    std::fs::write(tmp.join("vocab.json"), "{}").unwrap();
    match ClipTokenizer::from_dir(tmp) {
        Err(Error::MissingFile { path, .. }) => assert!(path.ends_with("merges.txt")),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    std::fs::write(tmp.join("merges.txt"), "#version: 0.2\na b c\n").unwrap();
    match ClipTokenizer::from_dir(tmp) {
        Err(Error::Tokenizer { path, message }) => {
            assert!(path.ends_with("merges.txt"), "{path:?}");
            assert!(message.contains("line 2"), "{message}");
        }
        other => panic!("expected Tokenizer error, got {other:?}"),
    }
    std::fs::write(tmp.join("tokenizer.json"), "{not json").unwrap();
    match ClipTokenizer::from_dir(tmp) {
        Err(Error::Tokenizer { path, .. }) => assert!(path.ends_with("tokenizer.json")),
        other => panic!("expected Tokenizer error, got {other:?}"),
    }
}
