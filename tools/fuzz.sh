#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time (default 120 s each). Not part of CI.
#   cargo install cargo-fuzz        # once
#   tools/fuzz.sh [SECONDS]
# cargo-fuzz needs nightly rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-120}"
export RUSTC_BOOTSTRAP=1
for t in config_json tokenizer textual_inversion safetensors_unet; do
  mkdir -p corpus/$t
  echo "== $t ($secs s)"
  cargo fuzz run --release "$t" corpus/$t -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs|ERROR|panicked|SUMMARY" || true
done
