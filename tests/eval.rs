//! `layret eval` against the same scores computed in Python with transformers
//! (tools/reference/make_eval.py) on the committed tiny CLIP and DINO models and a small run
//! folder; folders made elsewhere; the side-by-side table; bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use layret::burn::tensor::Device;
use layret::eval::{EvalSet, Evaluator, Scores};
use layret_test_support::{fixture, golden, tempdir};

const FILE: &str = "eval.safetensors";

fn evaluator() -> Evaluator {
    Evaluator::load(
        &fixture("eval/clip-tiny"),
        &fixture("eval/dino-tiny"),
        &Device::flex(),
    )
    .unwrap()
}

/// The run folder copied to `dir` (its manifest's reference paths are relative to the
/// repository root, where the tests run).
fn copy_run(dir: &Path, with_manifest: bool) -> PathBuf {
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(fixture("eval/run")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "manifest.json" && !with_manifest {
            continue;
        }
        std::fs::copy(e.path(), out.join(&name)).unwrap();
    }
    out
}

fn check(scores: &Scores, what: &str) {
    let per_image = golden(FILE, "scores.per_image").values;
    assert_eq!(scores.per_image.len() * 3, per_image.len(), "{what}");
    for (i, s) in scores.per_image.iter().enumerate() {
        for (j, got) in [s.clip_t, s.clip_i, s.dino].into_iter().enumerate() {
            let want = per_image[i * 3 + j];
            assert!(
                (got - want).abs() <= 1e-4,
                "{what}: image {i} score {j}: {got} vs {want}"
            );
        }
    }
    let per_prompt = golden(FILE, "scores.per_prompt").values;
    for (p, s) in scores.per_prompt.iter().enumerate() {
        let got = [
            s.clip_t,
            s.clip_i,
            s.dino,
            s.diversity.unwrap(),
            s.layout_diversity.unwrap(),
        ];
        for (j, g) in got.into_iter().enumerate() {
            let want = per_prompt[p * 5 + j];
            assert!(
                (g - want).abs() <= 1e-4,
                "{what}: prompt {p} score {j}: {g} vs {want}"
            );
        }
    }
    let o = &scores.overall;
    let want = golden(FILE, "scores.overall").values;
    let got = [
        o.clip_t,
        o.clip_i,
        o.dino,
        o.diversity.unwrap(),
        o.layout_diversity.unwrap(),
    ];
    for (j, g) in got.into_iter().enumerate() {
        assert!(
            (g - want[j]).abs() <= 1e-4,
            "{what}: overall {j}: {g} vs {}",
            want[j]
        );
    }
}

#[test]
fn scores_match_transformers() {
    let e = evaluator();
    let set = EvalSet::from_run(&fixture("eval/run")).unwrap();
    assert_eq!(
        set.clip_prompt(0),
        "a dog in the jungle",
        "the phrase replaced by the class"
    );
    let scores = e.score(&set, &mut layret::core::ignore_progress).unwrap();
    check(&scores, "from the manifest");
    // The same folder without its manifest, described by flags.
    let dir = tempdir();
    let bare = copy_run(&dir, false);
    let set = EvalSet::from_folder(
        &bare,
        set.prompts.clone(),
        set.phrase.clone(),
        set.class.clone(),
        set.references.clone(),
    )
    .unwrap();
    let scores = e.score(&set, &mut layret::core::ignore_progress).unwrap();
    check(&scores, "from flags");
}

fn layret() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layret"))
}

fn models(cmd: &mut Command) -> &mut Command {
    cmd.arg("--clip")
        .arg(fixture("eval/clip-tiny"))
        .arg("--dino")
        .arg(fixture("eval/dino-tiny"))
        .arg("-q")
}

#[test]
fn the_command_writes_scores_and_compares_folders() {
    let dir = tempdir();
    let run = copy_run(&dir, true);
    let bare = copy_run(&dir.join("elsewhere"), false);
    let mut cmd = layret();
    cmd.arg("eval").arg(&run).arg(&bare);
    models(&mut cmd)
        .args(["--prompts", "a sks dog in the jungle"])
        .args(["--prompts", "a sks dog wearing a red hat, oil painting"])
        .args(["--phrase", "sks dog", "--class", "dog"])
        .arg("--references")
        .arg(fixture("eval/references/ref0.png"))
        .arg("--references")
        .arg(fixture("eval/references/ref1.png"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in [&run, &bare] {
        let scores: Scores =
            serde_json::from_str(&std::fs::read_to_string(d.join("scores.json")).unwrap()).unwrap();
        check(&scores, &d.display().to_string());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("scores.json")).unwrap()).unwrap();
        for k in ["clip_t", "clip_i", "dino", "diversity", "layout_diversity"] {
            assert!(v["overall"][k].is_f64(), "overall.{k}");
        }
        let want = golden(FILE, "scores.overall").values;
        let overall = format!(
            "| **overall** | {:.4} | {:.4} | {:.4} |",
            want[0], want[1], want[2]
        );
        let md = std::fs::read_to_string(d.join("scores.md")).unwrap();
        assert!(md.contains(&overall), "{overall} in {md}");
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The side-by-side table: one row per folder.
    let want = golden(FILE, "scores.overall").values;
    let cells = format!("| {:.4} | {:.4} | {:.4} |", want[0], want[1], want[2]);
    let rows = stdout.lines().filter(|l| l.contains(&cells)).count();
    assert_eq!(rows, 4, "{stdout}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempdir();
    // A folder without a manifest and no flags.
    let bare = copy_run(&dir, false);
    let mut cmd = layret();
    cmd.arg("eval").arg(&bare);
    let out = models(&mut cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("has no manifest.json") && err.contains("--prompts"),
        "{err}"
    );
    // An image that cannot be read.
    let run = copy_run(&dir.join("broken"), true);
    std::fs::write(run.join("p0_s1.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let mut cmd = layret();
    cmd.arg("eval").arg(&run);
    let out = models(&mut cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("p0_s1.png"), "{err}");
    // A model folder that is not CLIP.
    let mut cmd = layret();
    cmd.arg("eval")
        .arg(fixture("eval/run"))
        .arg("--clip")
        .arg(fixture("eval/dino-tiny"))
        .arg("--dino")
        .arg(fixture("eval/dino-tiny"));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("model_type") && err.contains("CLIP"), "{err}");
    // Several prompts and files not named p<P>_s<K>.
    let odd = dir.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::copy(fixture("eval/run/p0_s0.png"), odd.join("image.png")).unwrap();
    let e = EvalSet::from_folder(
        &odd,
        vec!["a".into(), "b".into()],
        "x".into(),
        "y".into(),
        vec![],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("image.png") && e.to_string().contains("p<P>_s<K>"),
        "{e}"
    );
}

#[test]
fn the_comparison_runs_in_one_command() {
    let dir = tempdir();
    let out = dir.join("cmp");
    let status = Command::new("bash")
        .arg(fixture("../../tools/compare.sh"))
        .arg(&out)
        .args(["--model", &fixture("sd1-tiny").display().to_string()])
        .args([
            "--personalization",
            &format!(
                "ti:{}",
                fixture("personalization/ti_cat_toy.safetensors").display()
            ),
        ])
        .args(["--phrase", "<cat-toy>", "--class", "cat toy"])
        .args([
            "--reference",
            &fixture("reference.png").display().to_string(),
        ])
        .args([
            "--prompt",
            "a <cat-toy> on the beach",
            "--prompt",
            "a <cat-toy> in the snow",
        ])
        .args(["--num-samples", "2", "--steps", "4", "--size", "64"])
        .args(["--clip", &fixture("eval/clip-tiny").display().to_string()])
        .args(["--dino", &fixture("eval/dino-tiny").display().to_string()])
        .env("LAYRET", env!("CARGO_BIN_EXE_layret"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let table = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(
        table.contains("| | CLIP-T | CLIP-I | DINO | diversity | layout diversity |"),
        "{table}"
    );
    assert!(
        table.contains("layout-and-retouch |") && table.contains("personalized-only |"),
        "{table}"
    );
    for side in ["layout-and-retouch", "personalized-only"] {
        let s: Scores = serde_json::from_str(
            &std::fs::read_to_string(out.join(side).join("scores.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(s.per_image.len(), 4, "{side}");
    }
}
