//! The full-size check of the evaluation encoders: random-weight CLIP ViT-B/32, ViT-L/14 and
//! DINO ViT-S/16 at their published configs, written by `tools/reference/full_size_eval.py`
//! with transformers' goldens. Prints, per model, the max abs error of the pixel values and
//! embeddings (and CLIP's token ids and text features), the scores' largest difference, load
//! and embedding times, and the peak RSS.
//!
//! Usage: eval_check OUT_DIR [MODEL...]   (default: every model in OUT_DIR/golden.json)

use std::path::Path;

use layret::burn::tensor::{Device, Tensor};
use layret::core::clip::ClipModel;
use layret::core::vit::VitModel;
use layret::eval::cosine;
use layret::pipeline::read_rgb;
use layret_test_support::{golden_file, max_abs_diff};

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [n, d] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    (0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect()
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = a.first() else {
        eprintln!("usage: eval_check OUT_DIR [MODEL...]");
        std::process::exit(2);
    };
    let root = Path::new(dir);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("golden.json")).unwrap()).unwrap();
    let models: Vec<String> = if a.len() > 1 {
        a[1..].to_vec()
    } else {
        doc["models"].as_object().unwrap().keys().cloned().collect()
    };
    let dev = Device::flex();
    let inputs = doc["inputs"].as_object().unwrap();
    let images = |g: &str| -> Vec<image::RgbImage> {
        inputs[g]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| read_rgb(&root.join(f.as_str().unwrap())).unwrap())
            .collect()
    };
    let (imgs, refs) = (images("images"), images("references"));
    for name in models {
        let mdir = root.join(&name);
        let gold = root.join(format!("golden_{name}.safetensors"));
        let want_scores = &doc["models"][&name]["scores"];
        let t0 = std::time::Instant::now();
        if name.starts_with("clip") {
            let m = ClipModel::from_dir(&mdir, &dev).unwrap();
            let load = t0.elapsed().as_secs_f64();
            let t1 = std::time::Instant::now();
            let mut worst_pv: f64 = 0.0;
            let mut worst_emb: f64 = 0.0;
            let mut feats = Vec::new();
            for (g, set) in [("images", &imgs), ("references", &refs)] {
                let pv = m.processor.batch(set, &dev).unwrap();
                worst_pv = worst_pv.max(max_abs_diff(
                    pv.clone(),
                    &golden_file(&gold, &format!("{g}.clip_pixel_values")),
                ));
                let f = m.image_features_of(pv).unwrap();
                worst_emb = worst_emb.max(max_abs_diff(
                    f.clone(),
                    &golden_file(&gold, &format!("{g}.clip_image_embeds")),
                ));
                feats.push(rows(f));
            }
            let prompts: Vec<String> = doc["clip_prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            let ids = m
                .tokenize(&prompts.iter().map(String::as_str).collect::<Vec<_>>())
                .unwrap();
            let flat: Vec<f64> = ids.iter().flatten().map(|&i| i as f64).collect();
            let ids_ok = flat == golden_file(&gold, "prompts.input_ids").values;
            let t = m.text_features_of(&ids).unwrap();
            let text_err = max_abs_diff(t.clone(), &golden_file(&gold, "prompts.clip_text_embeds"));
            let texts = rows(t);
            let embed = t1.elapsed().as_secs_f64();
            let mut score_err: f64 = 0.0;
            for (i, img) in feats[0].iter().enumerate() {
                let clip_t = cosine(img, &texts[i]);
                let clip_i =
                    feats[1].iter().map(|r| cosine(img, r)).sum::<f64>() / feats[1].len() as f64;
                score_err = score_err
                    .max((clip_t - want_scores["clip_t"][i].as_f64().unwrap()).abs())
                    .max((clip_i - want_scores["clip_i"][i].as_f64().unwrap()).abs());
            }
            println!(
                "{name}: pixel_values {worst_pv:.1e}, image embeds {worst_emb:.1e}, token ids {}, text embeds {text_err:.1e}, scores {score_err:.1e}; load {load:.1}s, {} images + {} prompts embedded in {embed:.1}s; peak RSS {} MB",
                if ids_ok { "equal" } else { "DIFFER" },
                imgs.len() + refs.len(),
                prompts.len(),
                vm_hwm_kb() / 1024
            );
        } else {
            let m = VitModel::from_dir(&mdir, &dev).unwrap();
            let load = t0.elapsed().as_secs_f64();
            let t1 = std::time::Instant::now();
            let mut worst_pv: f64 = 0.0;
            let mut worst_emb: f64 = 0.0;
            let mut feats = Vec::new();
            for (g, set) in [("images", &imgs), ("references", &refs)] {
                let pv = m.processor.batch(set, &dev).unwrap();
                worst_pv = worst_pv.max(max_abs_diff(
                    pv.clone(),
                    &golden_file(&gold, &format!("{g}.dino_pixel_values")),
                ));
                let cls = m.cls(set).unwrap();
                worst_emb = worst_emb.max(max_abs_diff(
                    cls.clone(),
                    &golden_file(&gold, &format!("{g}.dino_cls")),
                ));
                feats.push(rows(cls));
            }
            let embed = t1.elapsed().as_secs_f64();
            let mut score_err: f64 = 0.0;
            for (i, img) in feats[0].iter().enumerate() {
                let dino =
                    feats[1].iter().map(|r| cosine(img, r)).sum::<f64>() / feats[1].len() as f64;
                score_err = score_err.max((dino - want_scores["dino"][i].as_f64().unwrap()).abs());
            }
            let div = 1.0 - cosine(&feats[0][0], &feats[0][1]);
            score_err = score_err.max((div - want_scores["diversity"].as_f64().unwrap()).abs());
            println!(
                "{name}: pixel_values {worst_pv:.1e}, CLS {worst_emb:.1e}, scores {score_err:.1e}; load {load:.1}s, {} images embedded in {embed:.1}s; peak RSS {} MB",
                imgs.len() + refs.len(),
                vm_hwm_kb() / 1024
            );
        }
    }
}
