#!/usr/bin/env bash
# The device check for a lent GPU machine (the `device` tool), from the repository root there,
# with gpu-bundle/ carried (built here by tools/gpu/bundle.sh):
#
#   run: tools/gpu/device_check.sh          carry: ["gpu-bundle"]      timeout_s: 600
#
# 1. probes the GPU: nvidia-smi, the Vulkan ICDs and what the loader sees;
# 2. runs the wgpu parity set (the CPU suites against the same goldens; LAYRET_TEST_DEVICE=wgpu),
#    the host-read count alone in its own process;
# 3. times an SD 1.5 UNet step (random weights, 64², batch 2, f32 and f16) and one 512²
#    Layout-and-Retouch image (gpu_check).
# Everything goes to $OUT (or gpu-check-out/): probe.txt, parity.log, device_reads.log,
# summary.txt, gpu_check.json. Each part has its own time limit so one hang cannot eat the
# lease (PARITY_LIMIT_S, CHECK_LIMIT_S; STEPS for the image).
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
bin=$(mktemp -d)
for f in gpu-bundle/*.xz; do
    name=$(basename "$f" .xz)
    if command -v xz >/dev/null; then
        xz -dc "$f" > "$bin/$name"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$bin/$name"
    fi
    chmod +x "$bin/$name"
done
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LAYRET_FIXTURES="$PWD/tests/fixtures"
# The Vulkan loader complains on every device open without one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
{
    echo "## date"; date -u
    echo "## nvidia-smi"; nvidia-smi 2>&1 || true
    echo "## Vulkan ICDs"; ls -l /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 || true
    cat /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json 2>/dev/null || true
    echo "## libvulkan"; ldconfig -p | grep -i vulkan || echo "(none system-wide; the bundled loader is used)"
    echo "## vulkaninfo"; (vulkaninfo --summary 2>&1 || echo "(no vulkaninfo)") | head -n 40
    echo "## CPU"; nproc; grep -m1 "model name" /proc/cpuinfo
} > "$OUT/probe.txt" 2>&1
export LAYRET_TEST_DEVICE=wgpu
: > "$OUT/summary.txt"
t0=$(date +%s)
timeout "${PARITY_LIMIT_S:-150}" "$bin/gpu_parity" --nocapture --test-threads=1 \
    --exact device_reads::a_sampling_step_reads_nothing_back_on_a_gpu_backend > "$OUT/device_reads.log" 2>&1
echo "device_reads rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
t0=$(date +%s)
timeout "${PARITY_LIMIT_S:-240}" "$bin/gpu_parity" --nocapture --test-threads=1 \
    --skip device_reads:: > "$OUT/parity.log" 2>&1
echo "parity rc=$? $(( $(date +%s) - t0 ))s: $(grep 'test result' "$OUT/parity.log")" \
    | tee -a "$OUT/summary.txt"
grep -h "max abs error\|reads" "$OUT/parity.log" "$OUT/device_reads.log" | sort | uniq > "$OUT/errors.txt"
t0=$(date +%s)
timeout "${CHECK_LIMIT_S:-180}" "$bin/gpu_check" wgpu "${STEPS:-50}" \
    > "$OUT/gpu_check.json" 2> "$OUT/gpu_check.log"
echo "gpu_check rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
cat "$OUT/gpu_check.json"
