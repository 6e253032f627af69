use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser};
use layret::batch::{
    BatchRequest, FlagKind, RequestState, Shard, default_seed, read_manifest, record_failure,
    request_dir, request_state,
};
use layret::{Error, Result};

use crate::generate;

/// Many `generate` requests from a JSON-lines manifest, optionally one shard of them (Slurm
/// job arrays, Kubernetes Indexed Jobs; docs/scale-out.md).
///
/// Each line is a JSON object whose keys are generate's long flags with _ for - (a list where
/// the flag repeats, true for a switch) plus an optional "id" (default: the line number). The
/// outputs of a request go to OUT/<id>/ exactly as `generate --out OUT/<id>` writes them; a
/// request without "seed" or "noise" gets a seed hashed from its id, so its images depend on
/// the request alone. The whole manifest is checked before any work starts. Requests whose
/// images already exist are skipped (a killed shard, run again, finishes the rest); a failing
/// request is appended to OUT/failures.jsonl and the shard goes on, exiting non-zero at the
/// end. Shards share OUT and the reference cache (OUT/.reference-cache unless a line sets
/// "reference_cache"): each subject's reference is computed once, under a lock file.
///
/// Examples:
///   layret batch requests.jsonl --out runs
///   layret batch requests.jsonl --out /shared/runs --shard env     # in an sbatch --array job
///   layret batch requests.jsonl --out runs --status
/// A line:
///   {"id": "dog-beach-0", "model": "sd15", "personalization": ["ti:dog.pt"], "phrase": "<dog>",
///    "class": "dog", "reference": ["dog.jpg"], "prompt": ["a <dog> on the beach"], "seed": 0}
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The manifest (JSON lines; blank lines and lines starting with # are skipped).
    manifest: PathBuf,
    /// Output folder: one subfolder per request id, and failures.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Run one shard: I/N (0-based), or env (Slurm's SLURM_ARRAY_TASK_ID/COUNT, or a
    /// Kubernetes Indexed Job's JOB_COMPLETION_INDEX with JOB_COMPLETIONS). Default: all.
    #[arg(long)]
    shard: Option<String>,
    /// Print done / pending / failed per request (of the shard) and exit.
    #[arg(long)]
    status: bool,
}

/// `generate`'s flags as a parser of their own (a manifest line is parsed by it).
#[derive(Parser, Debug)]
#[command(name = "generate")]
struct GenerateLine {
    #[command(flatten)]
    args: generate::Args,
}

/// How each `generate` flag takes values, from its clap definition.
fn flag_kinds() -> std::collections::HashMap<String, FlagKind> {
    GenerateLine::command()
        .get_arguments()
        .filter_map(|arg| {
            let kind = match arg.get_action() {
                ArgAction::SetTrue | ArgAction::SetFalse => FlagKind::Switch,
                ArgAction::Append => FlagKind::Repeatable,
                _ => FlagKind::Value,
            };
            Some((arg.get_long()?.to_string(), kind))
        })
        .collect()
}

/// The request as `generate` arguments, with batch's defaults: the output folder, a seed from
/// the id, the shared reference cache.
fn parse(r: &BatchRequest, a: &Args) -> Result<generate::Args> {
    let mut argv = vec!["generate".to_string()];
    argv.extend(r.to_args());
    argv.push("--out".into());
    argv.push(request_dir(&a.out, r).display().to_string());
    if !r.has("seed") && !r.has("noise") {
        argv.push("--seed".into());
        argv.push(default_seed(&r.id).to_string());
    }
    if !r.has("reference-cache") {
        argv.push("--reference-cache".into());
        argv.push(a.out.join(".reference-cache").display().to_string());
    }
    let bad = |m: String| Error::Config {
        file: a.manifest.clone(),
        message: format!("line {}: {m}", r.line),
    };
    let parsed = GenerateLine::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        bad(first.to_string())
    })?;
    for p in r.values("reference") {
        if !std::path::Path::new(p).is_file() {
            return Err(bad(format!("`reference` {p} is not a file")));
        }
    }
    Ok(parsed.args)
}

pub fn run(a: Args, quiet: bool) -> Result<()> {
    let kinds = flag_kinds();
    let requests = read_manifest(&a.manifest, &|flag| kinds.get(flag).copied())?;
    // Every line, before any work: values, required flags, reference files.
    let parsed = requests
        .iter()
        .map(|r| parse(r, &a))
        .collect::<Result<Vec<_>>>()?;
    let shard = match a.shard.as_deref() {
        None => Shard::ALL,
        Some("env") => Shard::from_env(&|k| std::env::var(k).ok())?,
        Some(s) => s.parse()?,
    };
    let mine: Vec<usize> = (0..requests.len()).filter(|&i| shard.contains(i)).collect();
    if a.status {
        let (mut done, mut pending, mut failed) = (0, 0, 0);
        for &i in &mine {
            let r = &requests[i];
            let state = request_state(&a.out, r);
            match &state {
                RequestState::Done => done += 1,
                RequestState::Pending => pending += 1,
                RequestState::Failed(_) => failed += 1,
            }
            let text = match state {
                RequestState::Done => "done".to_string(),
                RequestState::Pending => "pending".to_string(),
                RequestState::Failed(e) => format!("failed: {e}"),
            };
            println!("{}\tline {}\t{text}", r.id, r.line);
        }
        println!(
            "shard {shard}: {done} done, {pending} pending, {failed} failed of {}",
            mine.len()
        );
        return Ok(());
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io("creating", &a.out, e))?;
    // Requests sharing a model run together, so each model is loaded once per process.
    let mut order = mine.clone();
    order.sort_by_key(|&i| (parsed[i].model_key(), i));
    let mut loaded = generate::LoadedModels::default();
    let mut failures = 0;
    let mut parsed: Vec<Option<generate::Args>> = parsed.into_iter().map(Some).collect();
    for (n, &i) in order.iter().enumerate() {
        let r = &requests[i];
        if !quiet {
            eprintln!("[{}/{}] {} (line {})", n + 1, order.len(), r.id, r.line);
        }
        let Some(args) = parsed[i].take() else {
            continue;
        };
        match generate::run_with(args, quiet, &mut loaded) {
            Ok(()) => {}
            Err(e @ Error::Cancelled { .. }) => return Err(e),
            Err(e) => {
                eprintln!("error: {} (line {}): {e}", r.id, r.line);
                record_failure(&a.out, r, shard, &e)?;
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return Err(Error::invalid(
            "batch",
            format!(
                "{failures} of {} requests of shard {shard} failed; see {}",
                order.len(),
                a.out.join(layret::batch::FAILURES).display()
            ),
        ));
    }
    Ok(())
}
