#!/usr/bin/env bash
# The device check for a lent GPU machine (the `device` tool), from the repository root there,
# with gpu-bundle/ carried (built here by tools/gpu/bundle.sh):
#
#   run: tools/gpu/device_check.sh          carry: ["gpu-bundle"]
#
# 1. probes the GPU: nvidia-smi, the Vulkan ICDs and what the loader sees;
# 2. runs the wgpu parity suites (the same goldens as on the CPU; LAYRET_TEST_DEVICE=wgpu);
# 3. times an SD 1.5 UNet step (random weights, 64², batch 2, f32 and f16) and one 512²
#    Layout-and-Retouch image (gpu_check).
# Everything goes to $OUT (or gpu-check-out/): probe.txt, one log per suite, summary.txt,
# gpu_check.json. Each part has its own time limit so one hang cannot eat the lease.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
B="$PWD/gpu-bundle"
export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LAYRET_FIXTURES="$PWD/tests/fixtures"
{
    echo "## date"; date -u
    echo "## nvidia-smi"; nvidia-smi 2>&1 || true
    echo "## Vulkan ICDs"; ls -l /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 || true
    cat /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json 2>/dev/null || true
    echo "## libvulkan"; ldconfig -p | grep -i vulkan || echo "(none system-wide; bundled loader used)"
    echo "## vulkaninfo"; (vulkaninfo --summary 2>&1 || echo "(no vulkaninfo)") | head -n 40
    echo "## CPU"; nproc; grep -m1 "model name" /proc/cpuinfo
} > "$OUT/probe.txt" 2>&1
: > "$OUT/summary.txt"
export LAYRET_TEST_DEVICE=wgpu
# The Vulkan loader complains on every device open without one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
for exe in "$B"/bin/test--*; do
    name=$(basename "$exe")
    t0=$(date +%s)
    timeout "${SUITE_LIMIT_S:-240}" "$exe" --nocapture --test-threads=1 > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(( $(date +%s) - t0 ))s $(grep -c '^test .* ok$' "$OUT/$name.log") ok" \
        | tee -a "$OUT/summary.txt"
done
t0=$(date +%s)
timeout "${CHECK_LIMIT_S:-300}" "$B/bin/gpu_check" wgpu "${STEPS:-50}" \
    > "$OUT/gpu_check.json" 2> "$OUT/gpu_check.log"
echo "gpu_check rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
cat "$OUT/gpu_check.json"
