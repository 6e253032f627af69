//! Drives the built `layret` binary through its subcommands on the committed fixtures.

use std::path::PathBuf;
use std::process::Command;

use layret_test_support::tempdir;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layret"))
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn tokenize_prints_the_ids() {
    let out = bin()
        .args([
            "tokenize",
            "--model",
            &fixture("sd1-tiny"),
            "a photo of a dog",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 1929, 49407]);
    assert!(ids[7..].iter().all(|&i| i == 49407), "SD 1.x pads with EOS");

    let out = bin()
        .args([
            "tokenize",
            "--model",
            &fixture("sd1-tiny"),
            &"a ".repeat(80),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: prompt is 82 tokens long"), "{err}");
}

#[test]
fn txt2img_writes_pngs_with_parameters_and_latents() {
    let dir = tempdir();
    let out = bin()
        .args([
            "txt2img",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            "a sks dog",
            "--steps",
            "2",
        ])
        .args([
            "--width",
            "64",
            "--height",
            "64",
            "--seed",
            "5",
            "--num-images",
            "2",
            "--quiet",
        ])
        .arg("--out")
        .arg(dir.join("img.png"))
        .arg("--save-latents")
        .arg(dir.join("lat.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..2 {
        let path = dir.join(format!("img-{i}.png"));
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (64, 64));
        let text: Vec<(String, String)> = info
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        assert!(
            text.contains(&("prompt".into(), "a sks dog".into())),
            "{text:?}"
        );
        assert!(text.contains(&("seed".into(), "5".into())));
        assert!(text.contains(&("steps".into(), "2".into())));
    }
    let bytes = std::fs::read(dir.join("lat.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("latents").unwrap().shape(), &[2, 4, 8, 8]);
}

#[test]
fn txt2img_reads_injected_noise_and_checks_its_shape() {
    let dir = tempdir();
    // The diffusers pipeline golden's noise: [2, 4, 16, 16].
    let golden = fixture("golden/pipeline_sd1-tiny.safetensors");
    let out = bin()
        .args([
            "txt2img",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            "x",
            "--steps",
            "1",
        ])
        .args([
            "--width",
            "128",
            "--height",
            "128",
            "--num-images",
            "2",
            "--noise",
            &golden,
            "-q",
        ])
        .arg("--out")
        .arg(dir.join("a.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .args([
            "txt2img",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            "x",
            "--steps",
            "1",
        ])
        .args(["--width", "64", "--height", "64", "--noise", &golden, "-q"])
        .arg("--out")
        .arg(dir.join("b.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`noise`") && err.contains("[2, 4, 16, 16]"),
        "{err}"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "txt2img".into(),
                "--model".into(),
                "/no/such/model".into(),
                "--prompt".into(),
                "x".into(),
            ],
            "missing model folder",
        ),
        (
            vec![
                "txt2img".into(),
                "--model".into(),
                fixture("sd1-tiny"),
                "--prompt".into(),
                "x".into(),
                "--device".into(),
                "wgpu".into(),
            ],
            "--features wgpu",
        ),
        (
            vec![
                "txt2img".into(),
                "--model".into(),
                fixture("sd1-tiny"),
                "--prompt".into(),
                "x".into(),
                "--width".into(),
                "63".into(),
            ],
            "invalid width",
        ),
        (
            vec!["sites".into(), "--model".into(), fixture("golden")],
            "not a diffusers Stable Diffusion folder",
        ),
    ];
    for (args, want) in cases {
        let out = bin().args(&args).arg("--quiet").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn sites_lists_every_attention_call() {
    let out = bin()
        .args(["sites", "--model", &fixture("sd1-tiny")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 22);
    assert_eq!(
        lines[0],
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1\tself\t16x16\t2x8"
    );
    assert!(
        lines[21].starts_with("up_blocks.2.attentions.2.transformer_blocks.0.attn2\tcross\t16x16")
    );
}

/// A synthetic 8-bit RGB reference photo (a smooth gradient with a disc), written as PNG.
fn write_reference(path: &std::path::Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (cx, cy) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 2.0);
        let disc = cx * cx + cy * cy < (w.min(h) as f32 / 3.0).powi(2);
        if disc {
            image::Rgb([200, 120, 40])
        } else {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 90])
        }
    });
    img.save(path).unwrap();
}

#[test]
fn generate_writes_images_masks_latents_and_manifest() {
    let dir = tempdir();
    let reference = dir.join("ref.png");
    write_reference(&reference, 160, 128); // not square: center-cropped and resized
    let out_dir = dir.join("out");
    let out = bin()
        .args(["generate", "--model", &fixture("sd1-tiny")])
        .args([
            "--personalization",
            &format!("ti:{}", fixture("personalization/ti_cat_toy.safetensors")),
        ])
        .args(["--phrase", "<cat-toy>", "--class", "cat toy"])
        .arg("--reference")
        .arg(&reference)
        .args([
            "--prompt",
            "a <cat-toy> on the beach",
            "--prompt",
            "a <cat-toy> in the snow",
        ])
        .args([
            "--num-samples",
            "2",
            "--steps",
            "4",
            "--width",
            "128",
            "--height",
            "128",
            "--seed",
            "9",
        ])
        .args([
            "--mask-factor",
            "2",
            "--save-context",
            "--save-masks",
            "--grid",
            "-q",
        ])
        .arg("--save-latents")
        .arg(dir.join("lat.safetensors"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in 0..2 {
        for s in 0..2 {
            for suffix in [
                "",
                "_context",
                "_mask_target",
                "_mask_context",
                "_mask_reference",
                "_mask_blend",
            ] {
                let f = out_dir.join(format!("p{p}_s{s}{suffix}.png"));
                assert!(f.exists(), "{}", f.display());
            }
        }
    }
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out_dir.join("p1_s0.png")).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    let text: Vec<(String, String)> = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    assert!(
        text.contains(&("prompt".into(), "a <cat-toy> in the snow".into())),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|(k, v)| k == "method" && v.contains("swap_start=4"))
    );
    let grid = image::open(out_dir.join("grid.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (256, 4 * 128),
        "context | final, one row per image"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["images"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["settings"]["lambda1"], 1);
    assert_eq!(manifest["reference_cache"]["hits"], 1);
    let bytes = std::fs::read(dir.join("lat.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("latents").unwrap().shape(), &[4, 4, 16, 16]);
    assert_eq!(st.tensor("context").unwrap().shape(), &[4, 4, 16, 16]);
}

#[test]
fn generate_rejects_bad_inputs_with_one_line() {
    let dir = tempdir();
    let good = dir.join("ref.png");
    write_reference(&good, 128, 128);
    let truncated = dir.join("cut.jpg");
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(128, 128, image::Rgb([10, 200, 30]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(&truncated, &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let garbage = dir.join("garbage.png");
    std::fs::write(&garbage, b"not a png").unwrap();
    let base = |reference: &std::path::Path, prompt: &str, pers: &str| {
        let mut c = bin();
        c.args([
            "generate",
            "--model",
            &fixture("sd1-tiny"),
            "--personalization",
            pers,
        ])
        .args([
            "--phrase",
            "<cat-toy>",
            "--class",
            "cat toy",
            "--prompt",
            prompt,
        ])
        .args(["--steps", "2", "--width", "128", "--height", "128", "-q"])
        .arg("--reference")
        .arg(reference)
        .arg("--out")
        .arg(dir.join("out"));
        c
    };
    let ti = format!("ti:{}", fixture("personalization/ti_cat_toy.safetensors"));
    let cases: Vec<(Command, &str)> = vec![
        (base(&truncated, "a <cat-toy>", &ti), "truncated"),
        (base(&garbage, "a <cat-toy>", &ti), "cannot decode"),
        (
            base(&dir.join("missing.png"), "a <cat-toy>", &ti),
            "missing reference image",
        ),
        (base(&good, "a dog", &ti), "does not appear in the prompt"),
        (base(&good, "a <cat-toy>", "tii:x"), "unknown kind"),
        (
            base(&good, "a <cat-toy>", "ti:/no/such/file.safetensors"),
            "missing weights file",
        ),
    ];
    for (mut cmd, want) in cases {
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}

#[test]
fn inspect_describes_a_folder_and_resolves_the_hf_cache() {
    // A Hugging Face cache holding sd1-tiny as `org/tiny`.
    let home = tempdir();
    let snap = home.join("hub/models--org--tiny/snapshots/abc123");
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(fixture("sd1-tiny"), &snap).unwrap();
    std::fs::create_dir_all(home.join("hub/models--org--tiny/refs")).unwrap();
    std::fs::write(home.join("hub/models--org--tiny/refs/main"), "abc123").unwrap();
    let out = bin()
        .args(["inspect", "--model", "org/tiny"])
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("abc123"), "{text}");
    assert!(
        text.contains("diffusion_pytorch_model.safetensors") && text.contains("F32×"),
        "{text}"
    );
    assert!(
        text.contains("model.safetensors") && text.contains("F16×"),
        "{text}"
    );
    assert!(text.contains("block_out_channels=[16,32,32]"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("parameters "));

    let out = bin()
        .args(["inspect", "--model", "org/missing", "-q"])
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("Hugging Face cache") && err.contains("pass a diffusers folder"),
        "{err}"
    );
}

#[test]
fn invert_writes_noise_usable_by_txt2img() {
    let dir = tempdir();
    let img = dir.join("img.png");
    write_reference(&img, 128, 128);
    let noise = dir.join("noise.safetensors");
    let out = bin()
        .args([
            "invert",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            "a photo",
            "--steps",
            "4",
        ])
        .args(["--width", "128", "--height", "128", "-q"])
        .arg("--image")
        .arg(&img)
        .arg("--out")
        .arg(&noise)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&noise).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("noise").unwrap().shape(), &[1, 4, 16, 16]);
    assert_eq!(st.tensor("trajectory").unwrap().shape(), &[4, 4, 16, 16]);
    let out = bin()
        .args([
            "txt2img",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            "a photo",
            "--steps",
            "4",
        ])
        .args(["--width", "128", "--height", "128", "-q", "--guidance", "1"])
        .arg("--noise")
        .arg(&noise)
        .arg("--out")
        .arg(dir.join("back.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for cmd in [
        "generate", "txt2img", "invert", "tokenize", "sites", "inspect",
    ] {
        let out = bin().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Example"),
            "{cmd} --help has no example:\n{text}"
        );
    }
}

/// The latents `txt2img` saves for `model_args`, as bytes.
fn txt2img_latents(dir: &std::path::Path, name: &str, model_args: &[&str]) -> Vec<u8> {
    let lat = dir.join(format!("{name}.safetensors"));
    let out = bin()
        .arg("txt2img")
        .args(model_args)
        .args(["--prompt", "a <cat-toy> dog", "--steps", "2"])
        .args(["--width", "64", "--height", "64", "--seed", "3", "-q"])
        .arg("--out")
        .arg(dir.join(format!("{name}.png")))
        .arg("--save-latents")
        .arg(&lat)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(lat).unwrap()
}

#[test]
fn single_files_vaes_and_stacked_personalizations_from_the_command_line() {
    let dir = tempdir();
    let folder = txt2img_latents(&dir, "folder", &["--model", &fixture("sd1-tiny")]);
    // The same model as an LDM single file (.safetensors and .ckpt): the same latents.
    for f in [
        "formats/sd1-tiny-ldm.safetensors",
        "formats/sd1-tiny-ldm.ckpt",
    ] {
        let single = txt2img_latents(
            &dir,
            "single",
            &["--model", &fixture(f), "--config", &fixture("sd1-tiny")],
        );
        assert_eq!(folder, single, "{f}");
    }
    // The personalized model alone (txt2img --personalization): a token then a LoRA.
    let ti = format!("ti:{}", fixture("formats/learned_embeds.bin"));
    let lora = format!(
        "lora:{}@0.5",
        fixture("formats/lora_peft_alpha.safetensors")
    );
    let only_ti = txt2img_latents(
        &dir,
        "ti",
        &["--model", &fixture("sd1-tiny"), "--personalization", &ti],
    );
    let both = txt2img_latents(
        &dir,
        "both",
        &[
            "--model",
            &fixture("sd1-tiny"),
            "--personalization",
            &ti,
            "--personalization",
            &lora,
        ],
    );
    assert_ne!(folder, only_ti, "the token changes the conditioning");
    assert_ne!(only_ti, both, "the LoRA changes the model");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.join("both.png")).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    let text = &reader.info().uncompressed_latin1_text;
    assert!(
        text.iter()
            .any(|t| t.keyword == "personalization" && t.text.contains("lora_peft_alpha")),
        "{text:?}"
    );
    // Another VAE changes only the decoding: identical latents.
    let vae = txt2img_latents(
        &dir,
        "vae",
        &[
            "--model",
            &fixture("sd1-tiny"),
            "--vae",
            &fixture("sd2-tiny/vae"),
        ],
    );
    assert_eq!(folder, vae);
    assert_ne!(
        std::fs::read(dir.join("folder.png")).unwrap(),
        std::fs::read(dir.join("vae.png")).unwrap(),
        "another VAE decodes differently"
    );
}

#[test]
fn inspect_says_what_a_single_file_is() {
    let out = bin()
        .args([
            "inspect",
            "--model",
            &fixture("formats/sd2-tiny-ldm.safetensors"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("SD 2.x single-file checkpoint"), "{text}");
    assert!(text.contains("4 resblocks"), "{text}");
    assert!(
        text.contains("--config"),
        "the tiny shapes need --config: {text}"
    );
    let out = bin()
        .args(["inspect", "--model", &fixture("formats/bad/code_global.pt")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("posix.system"), "{err}");
}

#[test]
fn the_readme_offline_command_runs_as_written() {
    // The README's first `cargo run --release -- generate …` command, run from the
    // repository root as a new user would (its output folder redirected).
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let start = readme.find("cargo run --release -- generate").unwrap();
    let mut command = String::new();
    for line in readme[start..].lines() {
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    // Split like a shell would (double quotes group words).
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in command.trim_start_matches("cargo run --release --").chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    assert!(
        args.iter().any(|a| a == "tests/fixtures/reference.png"),
        "{args:?}"
    );
    let dir = tempdir();
    let i = args.iter().position(|a| a == "--out").unwrap();
    args[i + 1] = dir.join("out").display().to_string();
    let out = bin()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(&args)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("out/p0_s0.png").exists());
}

#[test]
fn txt2img_samplers_match_diffusers_from_the_command_line() {
    use layret::burn::tensor::Tensor;
    let dir = tempdir();
    // diffusers' StableDiffusionPipeline with each scheduler, on the same injected noise.
    let noise: Tensor<4> =
        layret_test_support::golden_tensor("schedulers.safetensors", "pipe.sd1-tiny.noise");
    let noise_file = dir.join("noise.safetensors");
    layret::core::noise::save_tensors(&noise_file, &[("noise", noise)]).unwrap();
    for (scheduler, karras, golden, sampler) in [
        ("dpmpp-2m", true, "dpmpp_2m_karras", "DPM++ 2M Karras"),
        ("unipc", false, "unipc", "UniPC"),
        ("euler", false, "euler", "Euler"),
    ] {
        let png = dir.join(format!("{scheduler}.png"));
        let lat = dir.join(format!("{scheduler}.safetensors"));
        let mut cmd = bin();
        cmd.args(["txt2img", "--model", &fixture("sd1-tiny")])
            .args(["--prompt", "a photo of a sks dog surfing"])
            .args(["--negative-prompt", "blurry", "--steps", "5"])
            .args(["--width", "128", "--height", "128", "--num-images", "2"])
            .args(["--scheduler", scheduler, "-q", "--noise"])
            .arg(&noise_file)
            .arg("--out")
            .arg(&png)
            .arg("--save-latents")
            .arg(&lat);
        if karras {
            cmd.arg("--karras");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = layret_test_support::golden_file(&lat, "latents");
        let want = layret_test_support::golden(
            "schedulers.safetensors",
            &format!("pipe.sd1-tiny.{golden}.5.latents"),
        );
        let err = layret_test_support::max_abs_diff_values(&got.values, &want.values);
        assert!(err <= 1e-4, "{scheduler}: {err}");
        // The choice is in the metadata other tools read.
        let png = png.with_file_name(format!("{scheduler}-0.png"));
        let text = layret::core::image_io::read_png_text(&png).unwrap();
        let params = text
            .iter()
            .find(|(k, _)| k == "parameters")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(params.contains(&format!("Sampler: {sampler},")), "{params}");
    }
}

#[test]
fn generate_in_bf16_records_the_dtypes_in_the_manifest() {
    // `--dtype bf16` end to end on the CPU (the AVX512-BF16 kernels where the CPU has them),
    // the VAE f32 by default; the manifest says which dtypes made the images.
    let dir = tempdir();
    let reference = dir.join("ref.png");
    write_reference(&reference, 128, 128);
    let out_dir = dir.join("out");
    let out = bin()
        .args(["generate", "--model", &fixture("sd1-tiny")])
        .args([
            "--personalization",
            &format!("ti:{}", fixture("personalization/ti_cat_toy.safetensors")),
        ])
        .args(["--phrase", "<cat-toy>", "--class", "cat toy"])
        .arg("--reference")
        .arg(&reference)
        .args(["--prompt", "a <cat-toy> on the beach", "--steps", "3"])
        .args(["--width", "128", "--height", "128", "--mask-factor", "2"])
        .args(["--dtype", "bf16", "--seed", "3", "-q", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("p0_s0.png").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["dtype"], "bf16");
    assert_eq!(manifest["vae_dtype"], "f32");
    // A dtype that is not one is refused, naming the flag.
    let out = bin()
        .args([
            "txt2img",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            "a dog",
        ])
        .args(["--vae-dtype", "f8", "--out"])
        .arg(dir.join("t"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dtype") && err.contains("f8"), "{err}");
}
