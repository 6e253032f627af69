//! The worked examples of docs/attention.md, run as the test suite's own code (each example
//! file is included as a module and its `run` called on the tiny fixtures).

#![allow(clippy::single_range_in_vec_init)]

#[allow(dead_code)]
#[path = "../examples/attention_maps.rs"]
mod attention_maps;
#[allow(dead_code)]
#[path = "../examples/multi_reference.rs"]
mod multi_reference;
#[allow(dead_code)]
#[path = "../examples/style_aligned.rs"]
mod style_aligned;

use std::path::PathBuf;

use layret::burn::tensor::Tensor;
use layret_test_support::{max_abs_diff_tensors, tempdir};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd1-tiny")
}

fn diff(a: &image::RgbImage, b: &image::RgbImage) -> u32 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn attention_maps_writes_one_heat_map_per_token_and_step() {
    let out = tempdir();
    let prompt = "a photo of a dog";
    let maps = attention_maps::run(&tiny(), prompt, &out, 3, 64).unwrap();
    // 5 tokens (a, photo, of, a, dog) × 3 steps, each a readable PNG of the image size.
    assert_eq!(maps.len(), 15);
    assert!(
        maps.iter().any(|(s, p, f)| *s == 2
            && *p == 5
            && f.file_name().unwrap() == "step02_token05_dog.png")
    );
    for (_, _, f) in &maps {
        let img = image::open(f).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    assert!(out.join("image.png").is_file());
    // The maps differ between tokens (they are the tokens' own attention, not one map).
    let a = image::open(&maps[0].2).unwrap().to_rgb8();
    let b = image::open(&maps[4].2).unwrap().to_rgb8();
    assert!(diff(&a, &b) > 0);
}

#[test]
fn style_aligned_shares_attention_but_keeps_the_reference() {
    let prompts = ["a house, watercolor", "a cat, watercolor"];
    let (shared, zs) = style_aligned::run(&tiny(), &prompts, 4, 64, true).unwrap();
    let (alone, za) = style_aligned::run(&tiny(), &prompts, 4, 64, false).unwrap();
    assert_eq!(shared.len(), 2);
    let row = |z: &Tensor<4>, i: usize| z.clone().slice([i..i + 1]);
    // The reference image attends only to itself: the same as without sharing.
    let d0 = max_abs_diff_tensors(row(&zs, 0), row(&za, 0));
    assert!(d0 <= 1e-5, "{d0}");
    assert!(diff(&shared[0], &alone[0]) <= 1);
    // The other one reads the reference's keys and values.
    let d1 = max_abs_diff_tensors(row(&zs, 1), row(&za, 1));
    assert!(d1 > 1e-3, "{d1}");
}

#[test]
fn multi_reference_composes_from_masked_references() {
    let (toy, toy_mask) = multi_reference::reference(64, [220, 120, 30], (32, 40));
    let (hat, hat_mask) = multi_reference::reference(64, [40, 60, 200], (32, 16));
    let refs = [
        (toy, toy_mask, "a photo of a cat toy"),
        (hat, hat_mask, "a photo of a hat"),
    ];
    let with =
        multi_reference::run(&tiny(), "a cat toy wearing a hat", &refs, 4, Some(3.0)).unwrap();
    let without = multi_reference::run(&tiny(), "a cat toy wearing a hat", &refs, 4, None).unwrap();
    let weaker =
        multi_reference::run(&tiny(), "a cat toy wearing a hat", &refs, 4, Some(1.0)).unwrap();
    assert_eq!(with.dimensions(), (64, 64));
    assert!(diff(&with, &without) > 2, "the references take effect");
    assert!(
        diff(&with, &weaker) > 0,
        "the weight (additive bias) takes effect"
    );
}
