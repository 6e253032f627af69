#!/usr/bin/env bash
# Build, here, what tools/gpu/device_check.sh runs on a lent GPU machine (which reaches no
# registry): the wgpu parity set as one test binary (layret-pipeline's `gpu_parity`: the CPU
# suites of layret-core and layret-pipeline, unchanged) and the gpu_check timing binary,
# stripped and xz-compressed, with the Vulkan loader, into gpu-bundle/ (git-ignored; the device
# tool carries it: carry ["gpu-bundle"], at most 64 MiB — checked below).
#
#   tools/gpu/bundle.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-wgpu}"
rm -rf gpu-bundle && mkdir -p gpu-bundle
# The workspace's feature set, as tools/gpu/parity.sh builds it, so both share one build.
features="layret/wgpu,layret-test-support/wgpu"
exe=$(cargo test --release --workspace --exclude layret-benches \
    --features "$features,layret-pipeline/gpu-parity" --test gpu_parity --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_parity":
        print(m["executable"])
')
cargo build --release --workspace --features "$features,layret-benches/wgpu" --bin gpu_check 2>&1 | tail -n 1
strip -o gpu-bundle/gpu_parity "$exe"
strip -o gpu-bundle/gpu_check "$CARGO_TARGET_DIR/release/gpu_check"
# The Vulkan loader (the GPU machine's driver brings its own ICD; the loader may be missing).
loader=$(ldconfig -p | awk '/libvulkan.so.1 / { print $NF; exit }')
if [ -n "$loader" ]; then cp -L "$loader" gpu-bundle/libvulkan.so.1; fi
xz -6 -T2 gpu-bundle/*
ls -l gpu-bundle
bytes=$(du -cb gpu-bundle/* | tail -n1 | cut -f1)
echo "gpu-bundle: $bytes bytes"
if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
    echo "gpu-bundle is over the device tool's 64 MiB" >&2
    exit 1
fi
