//! Drives the built `layret` binary through its subcommands on the committed fixtures.

use std::path::PathBuf;
use std::process::Command;

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

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layret-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tokenize_prints_the_ids() {
    let out = bin()
        .args(["tokenize", "--model", &fixture("sd1-tiny"), "a photo of a dog"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 1929, 49407]);
    assert!(ids[7..].iter().all(|&i| i == 49407), "SD 1.x pads with EOS");

    let out = bin()
        .args(["tokenize", "--model", &fixture("sd1-tiny"), &"a ".repeat(80)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: prompt is 82 tokens long"), "{err}");
}

#[test]
fn txt2img_writes_pngs_with_parameters_and_latents() {
    let dir = tempdir("txt2img");
    let out = bin()
        .args(["txt2img", "--model", &fixture("sd1-tiny"), "--prompt", "a sks dog", "--steps", "2"])
        .args(["--width", "64", "--height", "64", "--seed", "5", "--num-images", "2", "--quiet"])
        .arg("--out")
        .arg(dir.join("img.png"))
        .arg("--save-latents")
        .arg(dir.join("lat.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..2 {
        let path = dir.join(format!("img-{i}.png"));
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (64, 64));
        let text: Vec<(String, String)> = info
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        assert!(text.contains(&("prompt".into(), "a sks dog".into())), "{text:?}");
        assert!(text.contains(&("seed".into(), "5".into())));
        assert!(text.contains(&("steps".into(), "2".into())));
    }
    let bytes = std::fs::read(dir.join("lat.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("latents").unwrap().shape(), &[2, 4, 8, 8]);
}

#[test]
fn txt2img_reads_injected_noise_and_checks_its_shape() {
    let dir = tempdir("noise");
    // The diffusers pipeline golden's noise: [2, 4, 16, 16].
    let golden = fixture("golden/pipeline_sd1-tiny.safetensors");
    let out = bin()
        .args(["txt2img", "--model", &fixture("sd1-tiny"), "--prompt", "x", "--steps", "1"])
        .args(["--width", "128", "--height", "128", "--num-images", "2", "--noise", &golden, "-q"])
        .arg("--out")
        .arg(dir.join("a.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin()
        .args(["txt2img", "--model", &fixture("sd1-tiny"), "--prompt", "x", "--steps", "1"])
        .args(["--width", "64", "--height", "64", "--noise", &golden, "-q"])
        .arg("--out")
        .arg(dir.join("b.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("`noise`") && err.contains("[2, 4, 16, 16]"), "{err}");
}

#[test]
fn errors_are_one_clear_line() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["txt2img".into(), "--model".into(), "/no/such/model".into(), "--prompt".into(), "x".into()],
            "missing model folder",
        ),
        (
            vec!["txt2img".into(), "--model".into(), fixture("sd1-tiny"), "--prompt".into(), "x".into(), "--device".into(), "wgpu".into()],
            "--features wgpu",
        ),
        (
            vec!["txt2img".into(), "--model".into(), fixture("sd1-tiny"), "--prompt".into(), "x".into(), "--width".into(), "63".into()],
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
    let out = bin().args(["sites", "--model", &fixture("sd1-tiny")]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 22);
    assert_eq!(lines[0], "down_blocks.0.attentions.0.transformer_blocks.0.attn1\tself\t16x16\t2x8");
    assert!(lines[21].starts_with("up_blocks.2.attentions.2.transformer_blocks.0.attn2\tcross\t16x16"));
}
