//! `layret batch` on the tiny model: shards that partition a manifest and give the same
//! bytes whatever the split or order, kill and resume, two shards racing on one reference
//! cache computing it once, failures recorded while the shard goes on, and manifest errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use layret_test_support::tempdir;
use serde_json::{Value, json};

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

/// A request for the tiny model; `subject` picks one of two reference photos.
fn request(id: &str, prompts: &[&str], subject: usize, steps: usize) -> Value {
    let reference = if subject == 0 {
        fixture("reference.png")
    } else {
        fixture("images/rgba.png")
    };
    json!({
        "id": id,
        "model": fixture("sd1-tiny"),
        "personalization": [format!("ti:{}", fixture("personalization/ti_cat_toy.safetensors"))],
        "phrase": "<cat-toy>",
        "class": "cat toy",
        "reference": [reference],
        "prompt": prompts,
        "steps": steps,
        "width": 64,
        "height": 64,
    })
}

fn write_manifest(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn batch(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("batch")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(extra)
        .arg("-q")
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every PNG under `out` (path relative to `out` → bytes), temporary files excluded.
fn pngs(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(out).unwrap().flatten() {
        if !d.path().is_dir() || d.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".png") {
                let rel = format!("{}/{name}", d.file_name().to_string_lossy());
                v.push((rel, std::fs::read(f.path()).unwrap()));
            }
        }
    }
    v.sort();
    v
}

fn manifest(out: &Path, id: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(id).join("manifest.json")).unwrap())
        .unwrap()
}

fn six_requests() -> Vec<Value> {
    vec![
        request("r0", &["a <cat-toy> on the beach"], 0, 2),
        request("r1", &["a <cat-toy> in the snow"], 1, 2),
        request(
            "r2",
            &["a <cat-toy> in a box", "a <cat-toy> on a bed"],
            0,
            2,
        ),
        request("r3", &["a <cat-toy>"], 1, 2),
        request("r4", &["a <cat-toy> at night"], 0, 2),
        request("r5", &["a <cat-toy> in the rain"], 1, 2),
    ]
}

#[test]
fn any_split_and_order_gives_the_same_bytes() {
    let dir = tempdir();
    let m = dir.join("m.jsonl");
    write_manifest(&m, &six_requests());
    // All in one process.
    let one = dir.join("one");
    ok(&batch(&m, &one, &[]));
    let want = pngs(&one);
    assert_eq!(
        want.len(),
        7,
        "{:?}",
        want.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    // Three shards into one folder, the last shard first.
    let split = dir.join("split");
    for i in [2, 0, 1] {
        ok(&batch(&m, &split, &["--shard", &format!("{i}/3")]));
    }
    assert_eq!(pngs(&split), want, "3 shards");
    // The same manifest reversed: a request's images depend on the request alone.
    let mut rev = six_requests();
    rev.reverse();
    let mr = dir.join("reversed.jsonl");
    write_manifest(&mr, &rev);
    let reversed = dir.join("reversed");
    ok(&batch(&mr, &reversed, &["--shard", "1/2"]));
    ok(&batch(&mr, &reversed, &["--shard", "0/2"]));
    assert_eq!(pngs(&reversed), want, "reversed manifest, 2 shards");
    // Status: all done.
    let st = batch(&m, &split, &["--status"]);
    ok(&st);
    let text = String::from_utf8(st.stdout).unwrap();
    assert!(text.contains("6 done, 0 pending, 0 failed of 6"), "{text}");
}

#[test]
fn a_killed_shard_resumes_without_redoing_finished_requests() {
    let dir = tempdir();
    let m = dir.join("m.jsonl");
    let reqs: Vec<Value> = (0..4)
        .map(|i| request(&format!("k{i}"), &["a <cat-toy> on the beach"], 0, 12))
        .collect();
    write_manifest(&m, &reqs);
    let out = dir.join("out");
    let mut child = bin()
        .arg("batch")
        .arg(&m)
        .arg("--out")
        .arg(&out)
        .arg("-q")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = out.join("k0/p0_s0.png");
    let complete = |id: &str| {
        std::fs::read_to_string(out.join(id).join("manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["complete"] == json!(true))
    };
    let t0 = Instant::now();
    while !complete("k0") {
        assert!(t0.elapsed() < Duration::from_secs(120), "no first image");
        if let Ok(Some(s)) = child.try_wait() {
            panic!("finished before it could be killed: {s}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let st = String::from_utf8(batch(&m, &out, &["--status"]).stdout).unwrap();
    assert!(st.contains("k0\tline 1\tdone"), "{st}");
    assert!(st.contains("pending"), "killed before the end: {st}");
    let stamp = std::fs::metadata(&first).unwrap().modified().unwrap();
    ok(&batch(&m, &out, &[]));
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        stamp,
        "the finished request was not redone"
    );
    let st = String::from_utf8(batch(&m, &out, &["--status"]).stdout).unwrap();
    assert!(st.contains("4 done, 0 pending, 0 failed of 4"), "{st}");
}

#[test]
fn racing_shards_compute_a_shared_reference_once() {
    let dir = tempdir();
    let m = dir.join("m.jsonl");
    // Two requests, same subject, one per shard.
    write_manifest(
        &m,
        &[
            request("x", &["a <cat-toy> on the beach"], 0, 8),
            request("y", &["a <cat-toy> in the snow"], 0, 8),
        ],
    );
    let out = dir.join("out");
    let spawn = |shard: &str| {
        bin()
            .arg("batch")
            .arg(&m)
            .arg("--out")
            .arg(&out)
            .args(["--shard", shard, "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0/2"), spawn("1/2"));
    ok(&a.wait_with_output().unwrap());
    ok(&b.wait_with_output().unwrap());
    let stats: Vec<Value> = ["x", "y"]
        .iter()
        .map(|id| manifest(&out, id)["reference_cache"].clone())
        .collect();
    let misses: u64 = stats.iter().map(|s| s["misses"].as_u64().unwrap()).sum();
    let disk: u64 = stats.iter().map(|s| s["disk_hits"].as_u64().unwrap()).sum();
    assert_eq!(
        (misses, disk),
        (1, 1),
        "computed once, read once: {stats:?}"
    );
    let entries: Vec<_> = std::fs::read_dir(out.join(".reference-cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn a_failing_request_is_recorded_and_the_shard_goes_on() {
    let dir = tempdir();
    let m = dir.join("m.jsonl");
    let mut bad = request("bad", &["a <cat-toy>"], 0, 2);
    bad["width"] = json!(60); // not a multiple of 8: fails when it runs
    write_manifest(
        &m,
        &[
            request("good0", &["a <cat-toy>"], 0, 2),
            bad,
            request("good1", &["a <cat-toy> at night"], 0, 2),
        ],
    );
    let out = dir.join("out");
    let o = batch(&m, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("1 of 3 requests of shard 0/1 failed"), "{err}");
    let failures = std::fs::read_to_string(out.join("failures.jsonl")).unwrap();
    let f: Value = serde_json::from_str(failures.lines().next().unwrap()).unwrap();
    assert_eq!(
        (f["id"].as_str(), f["line"].as_u64()),
        (Some("bad"), Some(2))
    );
    assert!(f["error"].as_str().unwrap().contains("60"), "{f}");
    let st = String::from_utf8(batch(&m, &out, &["--status"]).stdout).unwrap();
    assert!(st.contains("2 done, 0 pending, 1 failed of 3"), "{st}");
    assert!(st.contains("bad\tline 2\tfailed: "), "{st}");
}

#[test]
fn manifest_errors_name_the_line_and_key_before_any_work() {
    let dir = tempdir();
    let good = request("g", &["a <cat-toy>"], 0, 2);
    let mut unknown = good.clone();
    unknown["sampling_steps"] = json!(3);
    let mut missing = good.clone();
    missing["reference"] = json!(["no/such/photo.png"]);
    let mut no_prompt = good.clone();
    no_prompt.as_object_mut().unwrap().remove("prompt");
    let mut bad_value = good.clone();
    bad_value["steps"] = json!("many");
    for (lines, want) in [
        (format!("{good}\n{{\"model\": "), "line 2: not JSON"),
        (
            format!("{good}\n{unknown}"),
            "line 2: unknown key `sampling_steps`",
        ),
        (
            format!("{missing}"),
            "line 1: `reference` no/such/photo.png is not a file",
        ),
        (
            format!("{good}\n{good}"),
            "line 2: id \"g\" is used by an earlier line",
        ),
        (
            format!("{no_prompt}"),
            "line 1: the following required arguments were not provided",
        ),
        (
            format!("{bad_value}"),
            "line 1: invalid value 'many' for '--steps",
        ),
    ] {
        let m = dir.join("m.jsonl");
        std::fs::write(&m, &lines).unwrap();
        let out = dir.join("out");
        let o = batch(&m, &out, &[]);
        assert_eq!(o.status.code(), Some(1), "{want}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(err.contains(want), "expected {want:?} in {err}");
        assert!(err.contains("m.jsonl"), "names the file: {err}");
        assert!(
            !out.join("g").exists(),
            "{want}: no work before the manifest is checked"
        );
    }
}
