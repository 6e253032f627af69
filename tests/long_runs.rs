//! Long runs that never lose work: images written as they finish (atomically, listed in the
//! manifest), a killed or interrupted run resumed where it stopped, any prompt's text kept,
//! reference photos as people have them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use layret::core::image_io::read_png_text;
use layret_test_support::tempdir;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A synthetic RGB reference photo.
fn write_reference(path: &Path) {
    image::RgbImage::from_fn(128, 128, |x, y| image::Rgb([x as u8, y as u8, 90]))
        .save(path)
        .unwrap();
}

/// `layret generate` on the tiny model with `prompts`, into `out`.
fn generate(reference: &Path, out: &Path, prompts: &[&str], steps: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layret"));
    c.args(["generate", "--model", &fixture("sd1-tiny")])
        .args([
            "--personalization",
            &format!("ti:{}", fixture("personalization/ti_cat_toy.safetensors")),
        ])
        .args(["--phrase", "<cat-toy>", "--class", "cat toy"])
        .arg("--reference")
        .arg(reference);
    for p in prompts {
        c.args(["--prompt", p]);
    }
    c.args([
        "--steps",
        &steps.to_string(),
        "--width",
        "128",
        "--height",
        "128",
    ])
    .args(["--mask-factor", "2", "--seed", "5", "-q", "--out"])
    .arg(out);
    c
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

/// Every PNG in `out` is complete and listed in its manifest.
fn every_png_valid_and_listed(out: &Path) -> Vec<String> {
    let listed: Vec<String> = manifest(out)["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["image"].as_str().unwrap().to_string())
        .collect();
    let mut pngs = Vec::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".png") {
            assert!(!name.starts_with('.'), "a temporary file was left: {name}");
            read_png_text(&e.path()).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(
                listed.contains(&name),
                "{name} is not in the manifest {listed:?}"
            );
            pngs.push(name);
        }
    }
    pngs.sort();
    pngs
}

/// Start `cmd`, wait for `out/p0_s0.png`, then run `stop` on the child.
fn stop_after_first_image(
    mut cmd: Command,
    out: &Path,
    stop: impl FnOnce(&mut std::process::Child),
) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !out.join("p0_s0.png").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no first image");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("finished before the first image was seen: {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop(&mut child);
    child.wait_with_output().unwrap()
}

const PROMPTS: [&str; 4] = [
    "a <cat-toy> on the beach",
    "a <cat-toy> in the snow",
    "a <cat-toy> in a bucket",
    "a <cat-toy> wearing a hat",
];

#[test]
fn a_killed_run_keeps_valid_listed_images_and_resumes_without_redoing_them() {
    let dir = tempdir();
    let reference = dir.join("ref.png");
    write_reference(&reference);
    let out = dir.join("out");
    let killed = stop_after_first_image(generate(&reference, &out, &PROMPTS, 24), &out, |c| {
        c.kill().unwrap() // SIGKILL: no chance to clean up
    });
    assert!(!killed.status.success());
    let before = every_png_valid_and_listed(&out);
    assert!(before.contains(&"p0_s0.png".to_string()), "{before:?}");
    assert!(
        before.len() < PROMPTS.len(),
        "killed before the end: {before:?}"
    );
    let first = std::fs::metadata(out.join("p0_s0.png"))
        .unwrap()
        .modified()
        .unwrap();
    // The same command again finishes the rest, without redoing the first image.
    let rerun = generate(&reference, &out, &PROMPTS, 24).output().unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let after = every_png_valid_and_listed(&out);
    assert_eq!(after.len(), PROMPTS.len(), "{after:?}");
    assert_eq!(
        std::fs::metadata(out.join("p0_s0.png"))
            .unwrap()
            .modified()
            .unwrap(),
        first,
        "the finished image was not rewritten"
    );
    assert_eq!(manifest(&out)["complete"], true);
    // A third run finds everything done; --overwrite redoes it, with the same pixels.
    let again = generate(&reference, &out, &PROMPTS, 24).output().unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::metadata(out.join("p0_s0.png"))
            .unwrap()
            .modified()
            .unwrap(),
        first
    );
    let pixels = image::open(out.join("p3_s0.png")).unwrap().to_rgb8();
    let over = generate(&reference, &out, &PROMPTS, 24)
        .arg("--overwrite")
        .output()
        .unwrap();
    assert!(over.status.success());
    assert_eq!(
        image::open(out.join("p3_s0.png")).unwrap().to_rgb8(),
        pixels
    );
    // Other settings (more steps) are other images: nothing is skipped.
    let other = generate(&reference, &out, &PROMPTS[..1], 3)
        .output()
        .unwrap();
    assert!(other.status.success());
    assert_ne!(
        std::fs::metadata(out.join("p0_s0.png"))
            .unwrap()
            .modified()
            .unwrap(),
        first,
        "different settings regenerate"
    );
}

#[test]
fn ctrl_c_stops_at_a_step_boundary_and_keeps_finished_images() {
    let dir = tempdir();
    let reference = dir.join("ref.png");
    write_reference(&reference);
    let out = dir.join("out");
    let done = stop_after_first_image(generate(&reference, &out, &PROMPTS, 24), &out, |c| {
        let ok = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    });
    assert_eq!(done.status.code(), Some(130), "cancelled runs exit 130");
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(err.contains("cancelled") && err.contains("saved"), "{err}");
    let kept = every_png_valid_and_listed(&out);
    assert!(
        kept.contains(&"p0_s0.png".to_string()) && kept.len() < PROMPTS.len(),
        "{kept:?}"
    );
    assert_eq!(manifest(&out)["complete"], false);
}

#[test]
fn any_prompt_round_trips_through_the_png_and_the_a1111_parameters() {
    let dir = tempdir();
    let out = dir.join("img.png");
    let prompt = "一只狗 — a dog, \"quoted\": ✓";
    let status = Command::new(env!("CARGO_BIN_EXE_layret"))
        .args([
            "txt2img",
            "--model",
            &fixture("sd1-tiny"),
            "--prompt",
            prompt,
        ])
        .args(["--negative-prompt", "blurry, ugly"])
        .args([
            "--steps", "2", "--width", "64", "--height", "64", "--seed", "7", "-q",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let text = read_png_text(&out).unwrap();
    let get = |k: &str| text.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    assert_eq!(get("prompt").as_deref(), Some(prompt), "{text:?}");
    let params = get("parameters").unwrap();
    let lines: Vec<&str> = params.lines().collect();
    assert_eq!(lines[0], prompt);
    assert_eq!(lines[1], "Negative prompt: blurry, ugly");
    assert!(
        lines[2]
            .starts_with("Steps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 64x64, Model: "),
        "{}",
        lines[2]
    );
}

#[test]
fn a_failed_save_leaves_no_file() {
    // The output's folder disappears mid-way: save_png fails and leaves nothing behind.
    let dir = tempdir();
    let img = image::RgbImage::new(8, 8);
    let gone = dir.join("missing-folder/x.png");
    assert!(layret::core::image_io::save_png(&img, &gone, &[]).is_err());
    assert!(!gone.exists());
    // Over an existing file: the old one stays whole if the write fails (a read-only
    // folder), and no temporary file is left.
    let f = dir.join("keep.png");
    layret::core::image_io::save_png(&img, &f, &[("k", "v".into())]).unwrap();
    let before = std::fs::read(&f).unwrap();
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let g = ro.join("y.png");
    layret::core::image_io::save_png(&img, &g, &[]).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm.clone()).unwrap();
    let is_root = std::fs::write(ro.join("probe"), b"").is_ok();
    if !is_root {
        assert!(layret::core::image_io::save_png(&image::RgbImage::new(4, 4), &g, &[]).is_err());
        assert_eq!(
            image::open(&g).unwrap().width(),
            8,
            "the old image is intact"
        );
    }
    let _ = std::fs::remove_file(ro.join("probe"));
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&ro, perm).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The u8 golden `key` of golden/images.safetensors as an RGB image.
fn pil_rgb(key: &str) -> image::RgbImage {
    let g = layret_test_support::golden("images.safetensors", key);
    let (h, w) = (g.shape[0] as u32, g.shape[1] as u32);
    let v: Vec<u8> = g.values.iter().map(|&x| x as u8).collect();
    image::RgbImage::from_raw(w, h, v).unwrap()
}

fn max_channel_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn reference_photos_as_people_have_them() {
    use layret::pipeline::read_rgb;
    let img = |f: &str| PathBuf::from(fixture(&format!("images/{f}")));
    // PNGs decode exactly as PIL (diffusers' load_image) does.
    for f in ["rgb.png", "rgba.png", "gray.png", "palette.png"] {
        let got = read_rgb(&img(f)).unwrap();
        assert_eq!(max_channel_diff(&got, &pil_rgb(f)), 0, "{f}");
    }
    // 16-bit: scaled to 8 bits (PIL clips instead; see make_images.py).
    let got = read_rgb(&img("gray16.png")).unwrap();
    assert_eq!(max_channel_diff(&got, &pil_rgb("gray16.png.scaled")), 0);
    // JPEGs: another IDCT than libjpeg's, so a few levels apart at most; CMYK converted; the
    // EXIF orientation applied (stored 96×64, shown 64×96).
    for f in ["plain.jpg", "cmyk.jpg", "exif_rotated.jpg"] {
        let got = read_rgb(&img(f)).unwrap();
        let want = pil_rgb(f);
        assert_eq!(got.dimensions(), want.dimensions(), "{f}");
        let d = max_channel_diff(&got, &want);
        assert!(d <= 8, "{f}: {d} levels from PIL's");
    }
    assert_eq!(
        read_rgb(&img("exif_rotated.jpg")).unwrap().dimensions(),
        (64, 96)
    );
    // A truncated JPEG is an error, not a half-gray image.
    let dir = tempdir();
    let bytes = std::fs::read(img("plain.jpg")).unwrap();
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_rgb(&cut).unwrap_err();
    assert!(
        matches!(&e, layret::Error::Image { path, message } if path == &cut && message.contains("truncated")),
        "{e}"
    );
    // ... and a truncated PNG too.
    let bytes = std::fs::read(img("rgb.png")).unwrap();
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    assert!(matches!(read_rgb(&cut), Err(layret::Error::Image { .. })));
}
