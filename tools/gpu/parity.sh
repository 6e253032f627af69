#!/usr/bin/env bash
# wgpu parity on Mesa's software Vulkan (lavapipe): the tiny-fixture parity suites (UNet, VAE,
# text encoder, txt2img, DDIM inversion, the method with replay and recompute, the host-read
# count per sampling step, half precision: f16 against PyTorch f16, bf16 refused as unsupported)
# run on burn's wgpu backend against the same PyTorch goldens as on the CPU.
#
#   tools/gpu/parity.sh            # install lavapipe if missing, build, run; ~15–35 min cold
#   PARITY_ICD=default tools/gpu/parity.sh   # use whatever Vulkan driver the machine has
#
# The build has its own target folder (target-wgpu/, or $CARGO_TARGET_DIR) so it never
# invalidates the CPU build. Output: each suite's result, its max errors (the tests print
# them with --nocapture), and the time of each phase; the last line says PASS or FAIL.
set -euo pipefail
cd "$(dirname "$0")/../.."
t_start=$(date +%s)
phase() { echo "== $1 ($(( $(date +%s) - t_start )) s)"; }

phase "Vulkan driver"
if [ "${PARITY_ICD:-lavapipe}" = lavapipe ]; then
    icd=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n1 || true)
    if [ -z "$icd" ]; then
        if [ "$(id -u)" = 0 ]; then
            apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null
        else
            sudo apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null
        fi
        icd=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json | head -n1)
    fi
    # Only lavapipe: no hardware driver is picked up by accident.
    export VK_ICD_FILENAMES="$icd"
    echo "ICD: $icd"
fi
if command -v vulkaninfo >/dev/null; then
    vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName|apiVersion" | head -n 6 || true
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-wgpu}"
features="layret/wgpu,layret-test-support/wgpu"

phase "build (--features wgpu, $CARGO_TARGET_DIR)"
# On a fresh clone the target folder does not exist yet; the lists and logs below live in it.
mkdir -p "$CARGO_TARGET_DIR"
# The suites' test binaries, as "package/target path" lines. The compiler's own output goes to
# build.log, shown when the build fails.
if ! cargo test --release --workspace --exclude layret-benches --features "$features" --no-run \
    --message-format=json 2>"$CARGO_TARGET_DIR/build.log" > "$CARGO_TARGET_DIR/build.json"; then
    tail -n 60 "$CARGO_TARGET_DIR/build.log"
    echo "FAIL: the wgpu build failed"
    exit 1
fi
python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        pkg = m["package_id"].split("#")[0].rsplit("/", 1)[-1].split("@")[0]
        print(pkg + "/" + m["target"]["name"], m["executable"])
' < "$CARGO_TARGET_DIR/build.json" > "$CARGO_TARGET_DIR/parity-binaries.txt"
wc -l < "$CARGO_TARGET_DIR/parity-binaries.txt" | xargs echo "test binaries:"

export LAYRET_TEST_DEVICE=wgpu
# The Vulkan loader complains on every device open without one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
status=0
suites=(layret-core/unet layret-core/vae layret-core/clip_text_encoder layret-core/pipeline
        layret-pipeline/method layret-pipeline/device_reads layret-core/half layret-pipeline/half)
for suite in "${suites[@]}"; do
    exe=$(awk -v s="$suite" '$1 == s { print $2 }' "$CARGO_TARGET_DIR/parity-binaries.txt")
    if [ -z "$exe" ]; then echo "no test binary for $suite"; status=1; continue; fi
    phase "wgpu: $suite"
    log="$CARGO_TARGET_DIR/parity-$(echo "$suite" | tr / -).log"
    set +e
    "$exe" --nocapture --test-threads=1 > "$log" 2>&1
    rc=$?
    set -e
    grep -E "^test |test result|max|err|reads|panicked" "$log" || true
    [ $rc = 0 ] || status=1
done
# The CLI as a user runs it: the README's main job on wgpu, twice with one reference cache (the
# second run loads the cached reference onto the device; it used to panic there).
cli="$CARGO_TARGET_DIR/release/layret"
if [ -x "$cli" ]; then
    scratch=$(mktemp -d)
    for run in 1 2; do
        phase "wgpu: layret generate --reference-cache, run $run"
        set +e
        "$cli" generate --device wgpu --model tests/fixtures/sd1-tiny \
            --personalization ti:tests/fixtures/personalization/ti_cat_toy.safetensors \
            --phrase "<cat-toy>" --class "cat toy" --reference tests/fixtures/reference.png \
            --prompt "a <cat-toy> on the beach" --steps 10 --width 128 --height 128 --mask-factor 2 \
            --seed 7 --reference-cache "$scratch/cache" --out "$scratch/out$run" > "$scratch/log$run" 2>&1
        rc=$?
        set -e
        tail -n 2 "$scratch/log$run"
        [ $rc = 0 ] || status=1
    done
    # Same seed: the cached reference must give the same image.
    if cmp -s "$scratch/out1/p0_s0.png" "$scratch/out2/p0_s0.png"; then
        echo "the second run (reference from the cache) made the same image"
    else
        echo "the runs with and without the cached reference differ"; status=1
    fi
    rm -rf "$scratch"
else
    echo "no layret binary in $CARGO_TARGET_DIR/release"; status=1
fi
phase "done"
if [ $status = 0 ]; then echo "PASS"; else echo "FAIL"; fi
exit $status
