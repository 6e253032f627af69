#!/usr/bin/env bash
# Build, here, what tools/gpu/device_check.sh runs on a lent GPU machine (which reaches no
# registry): the wgpu parity suites' test binaries and the gpu_check timing binary, stripped,
# with the Vulkan loader, into gpu-bundle/ (git-ignored; the device tool carries it:
# carry ["gpu-bundle"], at most 64 MiB).
#
#   tools/gpu/bundle.sh && du -sh gpu-bundle
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-wgpu}"
features="layret/wgpu,layret-test-support/wgpu"
rm -rf gpu-bundle && mkdir -p gpu-bundle/bin gpu-bundle/lib
cargo test --release --workspace --exclude layret-benches --features "$features" --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
want = {"layret-core/unet", "layret-core/vae", "layret-core/clip_text_encoder",
        "layret-core/pipeline", "layret-pipeline/method", "layret-pipeline/device_reads"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        pkg = m["package_id"].split("#")[0].rsplit("/", 1)[-1].split("@")[0]
        name = pkg + "/" + m["target"]["name"]
        if name in want:
            print(name.replace("/", "--"), m["executable"])
' | while read -r name exe; do strip -o "gpu-bundle/bin/test--$name" "$exe"; done
cargo build --release -p layret-benches --features wgpu --bin gpu_check 2>&1 | tail -n 1
strip -o gpu-bundle/bin/gpu_check "$CARGO_TARGET_DIR/release/gpu_check"
# The Vulkan loader (the GPU machine's driver brings its own ICD; the loader may be missing).
loader=$(ldconfig -p | awk '/libvulkan.so.1 / { print $NF; exit }')
[ -n "$loader" ] && cp -L "$loader" gpu-bundle/lib/libvulkan.so.1
ls -l gpu-bundle/bin gpu-bundle/lib
du -sh gpu-bundle
