//! `layret batch`: many `generate` requests from a JSON-lines manifest, split into shards for
//! Slurm job arrays, Kubernetes Indexed Jobs or any other runner (docs/scale-out.md).
//!
//! One request per line: a JSON object whose keys are `generate`'s long flag names with `_` for
//! `-` (`model`, `personalization`, `phrase`, `class`, `reference`, `prompt`, `seed`, `steps`,
//! …), a list where a flag may repeat, `true` for a switch, plus an optional `id` (default: the
//! line number). [`read_manifest`] checks every line before any work starts; [`Shard`] picks a
//! stable, balanced subset.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use layret_core::{Error, Result};
use serde_json::Value;

/// How a `generate` flag takes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// One value (`--steps 20`).
    Value,
    /// Repeatable (`--prompt a --prompt b`): a JSON list or one value.
    Repeatable,
    /// A switch (`--grid`): `true` or `false`.
    Switch,
}

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// 1-based line number in the manifest.
    pub line: usize,
    /// The request's id: its outputs go to `DIR/<id>/`.
    pub id: String,
    /// `(flag, values)` in key order (a switch has no values).
    pub flags: Vec<(String, Vec<String>)>,
}

impl BatchRequest {
    /// Whether the line sets `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == flag)
    }

    /// The command-line arguments of the request (`--flag value …`).
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, values) in &self.flags {
            if values.is_empty() {
                out.push(format!("--{flag}"));
            }
            for v in values {
                out.push(format!("--{flag}"));
                out.push(v.clone());
            }
        }
        out
    }

    /// The values of `flag` (empty if absent).
    pub fn values(&self, flag: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(f, _)| f == flag)
            .flat_map(|(_, v)| v.iter().map(String::as_str))
            .collect()
    }
}

fn manifest_error(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::Config {
        file: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    }
}

/// Keys a manifest line may not set: `batch` decides them.
const RESERVED: &[&str] = &["out"];

/// Read and check a manifest: every line a JSON object of known flags (`flag_kind` says which
/// flags exist and how they take values), ids unique and usable as folder names. Blank lines
/// and lines starting with `#` are skipped. Every error names the line and the key.
pub fn read_manifest(
    path: &Path,
    flag_kind: &dyn Fn(&str) -> Option<FlagKind>,
) -> Result<Vec<BatchRequest>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |m: String| manifest_error(path, line, m);
        let value: Value =
            serde_json::from_str(trimmed).map_err(|e| err(format!("not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(err("not a JSON object".into()));
        };
        let mut id = line.to_string();
        let mut flags = Vec::new();
        for (key, v) in map {
            if key == "id" {
                id = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    other => return Err(err(format!("`id` is {other}; a string or number"))),
                };
                continue;
            }
            let flag = key.replace('_', "-");
            if RESERVED.contains(&flag.as_str()) {
                return Err(err(format!(
                    "`{key}` is set by batch (each request writes to DIR/<id>/)"
                )));
            }
            let Some(kind) = flag_kind(&flag) else {
                return Err(err(format!(
                    "unknown key `{key}` (keys are generate's long flags with _ for -, plus id)"
                )));
            };
            let scalar = |v: &Value| -> Result<String> {
                match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(err(format!("`{key}` has {other}; a string or number"))),
                }
            };
            match (kind, v) {
                (_, Value::Null) => {}
                (FlagKind::Switch, Value::Bool(true)) => flags.push((flag, vec![])),
                (FlagKind::Switch, Value::Bool(false)) => {}
                (FlagKind::Switch, other) => {
                    return Err(err(format!(
                        "`{key}` is a switch: true or false, not {other}"
                    )));
                }
                (FlagKind::Repeatable, Value::Array(items)) => {
                    let values = items.iter().map(scalar).collect::<Result<Vec<_>>>()?;
                    if values.is_empty() {
                        return Err(err(format!("`{key}` is an empty list")));
                    }
                    flags.push((flag, values));
                }
                (FlagKind::Value, Value::Array(_)) => {
                    return Err(err(format!("`{key}` takes one value, not a list")));
                }
                (_, v) => flags.push((flag, vec![scalar(&v)?])),
            }
        }
        let bad_id = id.is_empty()
            || id == "."
            || id == ".."
            || id.starts_with('.')
            || id.contains(['/', '\\', '\0']);
        if bad_id {
            return Err(err(format!(
                "id {id:?} is not a folder name (no /, \\, leading dot or empty id)"
            )));
        }
        if !ids.insert(id.clone()) {
            return Err(err(format!("id {id:?} is used by an earlier line")));
        }
        out.push(BatchRequest { line, id, flags });
    }
    if out.is_empty() {
        return Err(Error::Config {
            file: path.to_path_buf(),
            message: "no requests (every line is blank or a # comment)".into(),
        });
    }
    Ok(out)
}

/// A shard: requests `i` with `i mod count == index` (in manifest order), so the shards of one
/// manifest partition it, each within one request of the others' size, and a request's shard
/// depends only on its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: usize,
    /// Number of shards, ≥ 1.
    pub count: usize,
}

impl Shard {
    /// Every request.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// A shard, checked: `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::invalid(
                "shard",
                format!("{index}/{count}; needs 0 ≤ I < N"),
            ));
        }
        Ok(Self { index, count })
    }

    /// The shard the job scheduler says this process is: Slurm job arrays
    /// (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`) or
    /// Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, of `JOB_COMPLETIONS`, which the Job
    /// sets from `.spec.completions`; docs/scale-out.md).
    pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::invalid("shard", format!("${name} is {v:?}; not a number"))
                }),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::invalid(
                    "shard",
                    "$SLURM_ARRAY_TASK_ID is set but $SLURM_ARRAY_TASK_COUNT is not",
                )
            })?;
            return Self::new(id.checked_sub(min).unwrap_or(usize::MAX), count);
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("JOB_COMPLETIONS")?.ok_or_else(|| {
                Error::invalid(
                    "shard",
                    "$JOB_COMPLETION_INDEX is set but $JOB_COMPLETIONS is not (set it to the Job's .spec.completions)",
                )
            })?;
            return Self::new(index, count);
        }
        Err(Error::invalid(
            "shard",
            "env: neither $SLURM_ARRAY_TASK_ID (Slurm job array) nor $JOB_COMPLETION_INDEX (Kubernetes Indexed Job) is set",
        ))
    }

    /// Whether request number `position` (0-based, manifest order) is in this shard.
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// This shard's requests, in manifest order.
    pub fn select<'a>(&self, requests: &'a [BatchRequest]) -> Vec<&'a BatchRequest> {
        requests
            .iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, r)| r)
            .collect()
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    /// `I/N`.
    fn from_str(s: &str) -> Result<Self> {
        let parse = |v: &str| v.trim().parse::<usize>().ok();
        match s.split_once('/').map(|(a, b)| (parse(a), parse(b))) {
            Some((Some(i), Some(n))) => Self::new(i, n),
            _ => Err(Error::invalid(
                "shard",
                format!("{s:?}; expected I/N (e.g. 0/4) or env"),
            )),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Where a request stands in `out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// Its `manifest.json` says complete.
    Done,
    /// Recorded in `failures.jsonl` (and not done since), with the error.
    Failed(String),
    /// Neither.
    Pending,
}

/// The file failures are appended to.
pub const FAILURES: &str = "failures.jsonl";

/// The folder of a request's outputs.
pub fn request_dir(out: &Path, r: &BatchRequest) -> PathBuf {
    out.join(&r.id)
}

/// The state of `r` in `out`.
pub fn request_state(out: &Path, r: &BatchRequest) -> RequestState {
    let done = std::fs::read_to_string(request_dir(out, r).join(crate::manifest::FILE_NAME))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v["complete"] == Value::Bool(true));
    if done {
        return RequestState::Done;
    }
    let failure = std::fs::read_to_string(out.join(FAILURES))
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["id"].as_str() == Some(r.id.as_str()))
                .and_then(|v| v["error"].as_str().map(str::to_string))
        });
    match failure {
        Some(e) => RequestState::Failed(e),
        None => RequestState::Pending,
    }
}

/// Append a failure record (one line, one `write` in append mode: lines from several shards
/// never interleave).
pub fn record_failure(out: &Path, r: &BatchRequest, shard: Shard, error: &Error) -> Result<()> {
    use std::io::Write;
    let line = serde_json::json!({
        "id": r.id, "line": r.line, "shard": shard.to_string(), "error": error.to_string(),
    })
    .to_string()
        + "\n";
    let path = out.join(FAILURES);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    f.write_all(line.as_bytes())
        .map_err(|e| Error::io("writing", &path, e))
}

/// The default seed of a request without `seed` or `noise`: a hash of its id, so its images
/// depend on the request alone (not on the shard, the order or the clock).
pub fn default_seed(id: &str) -> u64 {
    let mut f = layret_core::fingerprint::Fingerprinter::new();
    f.update_str("layret-batch-seed-v1");
    f.update_str(id);
    f.finish() >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(flag: &str) -> Option<FlagKind> {
        match flag {
            "prompt" | "reference" | "personalization" => Some(FlagKind::Repeatable),
            "grid" => Some(FlagKind::Switch),
            "model" | "steps" | "seed" | "phrase" | "class" => Some(FlagKind::Value),
            _ => None,
        }
    }

    fn manifest(text: &str) -> Result<Vec<BatchRequest>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, text).unwrap();
        read_manifest(&p, &kind)
    }

    #[test]
    fn lines_become_flags() {
        let r = manifest(
            "# a comment\n\n{\"id\": \"dog\", \"model\": \"m\", \"prompt\": [\"a\", \"b\"], \"steps\": 20, \"grid\": true}\n{\"model\": \"m\", \"prompt\": \"c\", \"grid\": false}\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].line, r[0].id.as_str()), (3, "dog"));
        // Key order follows serde_json's map (sorted, or the line's with preserve_order).
        let mut flags = r[0].flags.clone();
        flags.sort();
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            flags,
            [
                ("grid".to_string(), v(&[])),
                ("model".to_string(), v(&["m"])),
                ("prompt".to_string(), v(&["a", "b"])),
                ("steps".to_string(), v(&["20"])),
            ]
        );
        let args = r[0].to_args();
        assert_eq!(args.len(), 9);
        assert!(
            args.windows(4)
                .any(|w| w == ["--prompt", "a", "--prompt", "b"])
        );
        assert_eq!((r[1].id.as_str(), r[1].to_args().len()), ("4", 4));
    }

    #[test]
    fn bad_lines_name_line_and_key() {
        for (text, want) in [
            ("{\"model\": \"m\"}\n{\"model\": ", "line 2: not JSON"),
            (
                "{\"model\": \"m\", \"sampling\": 3}",
                "line 1: unknown key `sampling`",
            ),
            ("{\"steps\": [1, 2]}", "line 1: `steps` takes one value"),
            ("{\"grid\": 1}", "line 1: `grid` is a switch"),
            ("{\"out\": \"x\"}", "line 1: `out` is set by batch"),
            (
                "{\"id\": \"../x\"}",
                "line 1: id \"../x\" is not a folder name",
            ),
            (
                "{\"id\": 7}\n{\"id\": \"7\"}",
                "line 2: id \"7\" is used by an earlier line",
            ),
            ("[1, 2]", "line 1: not a JSON object"),
            ("# nothing\n", "no requests"),
        ] {
            let e = manifest(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn shards_partition_every_manifest() {
        let reqs: Vec<BatchRequest> = (0..20)
            .map(|i| BatchRequest {
                line: i + 1,
                id: i.to_string(),
                flags: vec![],
            })
            .collect();
        for n in 1..=5 {
            let mut seen = Vec::new();
            let mut sizes = Vec::new();
            for i in 0..n {
                let part = Shard::new(i, n).unwrap().select(&reqs);
                sizes.push(part.len());
                seen.extend(part.iter().map(|r| r.id.clone()));
            }
            seen.sort_by_key(|s| s.parse::<usize>().unwrap());
            let all: Vec<String> = (0..20).map(|i| i.to_string()).collect();
            assert_eq!(seen, all, "N = {n}: every request exactly once");
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "N = {n}: balanced {sizes:?}");
        }
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard::new(2, 4).unwrap());
        for bad in ["4/4", "1/0", "x", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_from_the_job_schedulers_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::from_env(&slurm).unwrap(), Shard::new(3, 4).unwrap());
        let offset = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(Shard::from_env(&offset).unwrap(), Shard::new(4, 8).unwrap());
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1"), ("JOB_COMPLETIONS", "3")]);
        assert_eq!(Shard::from_env(&k8s).unwrap(), Shard::new(1, 3).unwrap());
        assert!(Shard::from_env(&env(&[("JOB_COMPLETION_INDEX", "1")])).is_err());
        assert!(Shard::from_env(&env(&[])).is_err());
        assert!(Shard::from_env(&env(&[("SLURM_ARRAY_TASK_ID", "x")])).is_err());
    }

    #[test]
    fn default_seeds_depend_on_the_id_only() {
        assert_eq!(default_seed("dog-3"), default_seed("dog-3"));
        assert_ne!(default_seed("dog-3"), default_seed("dog-4"));
    }
}
