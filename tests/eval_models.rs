//! The evaluation encoders against transformers 5.24 (tools/reference/make_eval.py) on tiny
//! random CLIP and ViT models: Pillow's resize bit for bit, transformers' pixel values, and the
//! hidden states and embeddings the scores use.

use layret::burn::tensor::{Device, Tensor};
use layret::core::clip::ClipModel;
use layret::core::image_processor::pil_resize;
use layret::core::vit::VitModel;
use layret::pipeline::read_rgb;
use layret_test_support::{Golden, fixture, golden, max_abs_diff, max_abs_diff_values, to_f64};

const FILE: &str = "eval.safetensors";

fn groups() -> Vec<(String, Vec<String>)> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden/eval.json")).unwrap())
            .unwrap();
    doc["tensors"]["groups"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(g, files)| {
            let files = files
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    f.as_str()
                        .unwrap()
                        .trim_start_matches("tests/fixtures/")
                        .to_string()
                })
                .collect();
            (g.clone(), files)
        })
        .collect()
}

/// An RGB image as `[3, H, W]` values.
fn chw(img: &image::RgbImage) -> Vec<f64> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut v = vec![0.0; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            v[(c * h + y as usize) * w + x as usize] = p.0[c] as f64;
        }
    }
    v
}

fn close<const D: usize>(got: Tensor<D>, want: &Golden, tol: f64, what: &str) {
    assert_eq!(got.dims().to_vec(), want.shape, "{what}: shape");
    let err = max_abs_diff(got, want);
    assert!(err <= tol, "{what}: max abs error {err}");
}

#[test]
fn preprocessing_matches_pillow_and_transformers_exactly() {
    let dev = Device::flex();
    let clip = ClipModel::from_dir(&fixture("eval/clip-tiny"), &dev).unwrap();
    let dino = VitModel::from_dir(&fixture("eval/dino-tiny"), &dev).unwrap();
    let mut checked = 0;
    for (group, files) in groups() {
        let images: Vec<_> = files
            .iter()
            .map(|f| read_rgb(&fixture(f)).unwrap())
            .collect();
        for (k, img) in images.iter().enumerate() {
            let key = |t: &str| format!("{group}.{k}.{t}");
            assert_eq!(
                chw(img),
                golden(FILE, &key("rgb")).values,
                "{group}.{k}: RGB"
            );
            let resized = clip.processor.resized(img);
            assert_eq!(
                chw(&resized),
                golden(FILE, &key("clip_resized")).values,
                "{group}.{k}: bicubic resize"
            );
            assert_eq!(
                chw(&dino.processor.resized(img)),
                golden(FILE, &key("dino_resized")).values,
                "{group}.{k}: bilinear resize"
            );
            checked += 1;
        }
        let clip_pixels = clip.processor.batch(&images, &dev).unwrap();
        let want = golden(FILE, &format!("{group}.clip_pixel_values"));
        assert_eq!(
            max_abs_diff(clip_pixels, &want),
            0.0,
            "{group}: CLIP pixel values"
        );
        let dino_pixels = dino.processor.batch(&images, &dev).unwrap();
        let want = golden(FILE, &format!("{group}.dino_pixel_values"));
        assert_eq!(
            max_abs_diff(dino_pixels, &want),
            0.0,
            "{group}: DINO pixel values"
        );
    }
    assert_eq!(checked, 13);
    // The resize on its own: upscaling, downscaling and an identity size.
    let img = read_rgb(&fixture("eval/extra/small.png")).unwrap();
    let same = pil_resize(
        &img,
        img.width() as usize,
        img.height() as usize,
        layret::core::image_processor::Resample::Bicubic,
    );
    assert_eq!(same, img, "a resize to the same size is the identity");
}

#[test]
fn embeddings_match_transformers() {
    let dev = Device::flex();
    let clip = ClipModel::from_dir(&fixture("eval/clip-tiny"), &dev).unwrap();
    let dino = VitModel::from_dir(&fixture("eval/dino-tiny"), &dev).unwrap();
    for (group, files) in groups() {
        let images: Vec<_> = files
            .iter()
            .map(|f| read_rgb(&fixture(f)).unwrap())
            .collect();
        let key = |t: &str| format!("{group}.{t}");
        let pixels = clip.processor.batch(&images, &dev).unwrap();
        let (hidden, pooled) = clip.vision.forward(pixels).unwrap();
        close(
            hidden,
            &golden(FILE, &key("clip_vision_last_hidden_state")),
            1e-4,
            &group,
        );
        close(
            pooled,
            &golden(FILE, &key("clip_vision_pooled")),
            1e-4,
            &group,
        );
        close(
            clip.image_features(&images).unwrap(),
            &golden(FILE, &key("clip_image_embeds")),
            1e-4,
            &format!("{group}: get_image_features"),
        );
        let hidden = dino
            .forward(dino.processor.batch(&images, &dev).unwrap())
            .unwrap();
        close(
            hidden,
            &golden(FILE, &key("dino_last_hidden_state")),
            1e-4,
            &group,
        );
        close(
            dino.cls(&images).unwrap(),
            &golden(FILE, &key("dino_cls")),
            1e-4,
            &group,
        );
    }
    // Text: the protocol's prompts (phrase replaced by the class).
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden/eval.json")).unwrap())
            .unwrap();
    let prompts: Vec<&str> = doc["clip_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let ids = clip.tokenize(&prompts).unwrap();
    let flat: Vec<f64> = ids.iter().flatten().map(|&i| i as f64).collect();
    assert_eq!(flat, golden(FILE, "prompts.input_ids").values, "token ids");
    let hidden = clip.text.encode(&ids, 0).unwrap();
    close(
        hidden,
        &golden(FILE, "prompts.clip_text_last_hidden_state"),
        1e-4,
        "text hidden",
    );
    close(
        clip.text_features(&prompts).unwrap(),
        &golden(FILE, "prompts.clip_text_embeds"),
        1e-4,
        "get_text_features",
    );
    let _ = (max_abs_diff_values, to_f64::<1>);
}

#[test]
fn folders_that_are_not_clip_or_vit_are_refused() {
    let dev = Device::flex();
    let e = ClipModel::from_dir(&fixture("eval/dino-tiny"), &dev)
        .err()
        .unwrap();
    assert!(
        matches!(&e, layret::Error::UnsupportedConfig { key, value, .. } if key == "model_type" && value == "\"vit\""),
        "{e}"
    );
    let e = VitModel::from_dir(&fixture("eval/clip-tiny"), &dev)
        .err()
        .unwrap();
    assert!(
        matches!(&e, layret::Error::UnsupportedConfig { key, .. } if key == "model_type"),
        "{e}"
    );
    let e = VitModel::from_dir(&fixture("sd1-tiny"), &dev)
        .err()
        .unwrap();
    assert!(matches!(&e, layret::Error::MissingFile { .. }), "{e}");
}
