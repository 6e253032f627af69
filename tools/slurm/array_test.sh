#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, running `layret batch --shard env` as a 4-task job
# array on the committed tiny model, then checking every request was done exactly once.
#
#   tools/slurm/array_test.sh [path/to/layret]     (as root; installs Debian's slurm-wlm + munge)
#
# Debian's slurm-wlm (22.05 on Debian 12) with munge; slurmctld and slurmd on localhost, no
# cgroups (proctrack/linuxproc, task/none) so it also runs in a container. The cluster is
# stopped again at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
layret=${1:-$root/target/release/layret}
[ -x "$layret" ] || { echo "no layret binary at $layret (cargo build --release)"; exit 2; }
start=$(date +%s)
stamp() { echo "[slurm] $1 at +$(($(date +%s) - start)) s"; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null
fi
stamp "slurm-wlm installed ($(sinfo --version))"

host=$(hostname -s)
work=$(mktemp -d /tmp/layret-slurm.XXXXXX)
chmod 755 "$work"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
# munge: a key of our own, the daemon as its user.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pkill -x munged 2>/dev/null || true
runuser -u munge -- /usr/sbin/munged --force
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=layret
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c   # a clean state
slurmd
cleanup() {
    scancel --user=root 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -qE '^idle' && break
    sleep 1
done
sinfo
stamp "cluster up"

# 8 requests on the tiny model, two subjects.
fx=$root/tests/fixtures
manifest=$work/requests.jsonl
for i in $(seq 0 7); do
    ref=$fx/reference.png
    [ $((i % 2)) -eq 1 ] && ref=$fx/images/rgba.png
    printf '{"id": "req-%d", "model": "%s", "personalization": ["ti:%s"], "phrase": "<cat-toy>", "class": "cat toy", "reference": ["%s"], "prompt": ["a <cat-toy> number %d"], "steps": 6, "width": 64, "height": 64}\n' \
        "$i" "$fx/sd1-tiny" "$fx/personalization/ti_cat_toy.safetensors" "$ref" "$i" >> "$manifest"
done
out=$work/out
job=$(sbatch --parsable --array=0-3 --cpus-per-task=1 --job-name=layret-batch \
    --output="$work/task-%a.log" --chdir="$work" \
    --wrap "$layret batch $manifest --out $out --shard env")
stamp "submitted array job $job"
for _ in $(seq 600); do
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
    sleep 1
done
stamp "array job finished"
for f in "$work"/task-*.log; do echo "== $(basename "$f")"; cat "$f"; done
"$layret" batch "$manifest" --out "$out" --status | tee "$work/status.txt"
# Every request done, each by exactly one task.
grep -q "8 done, 0 pending, 0 failed of 8" "$work/status.txt"
ran=$(grep -ho '^\[[0-9]*/[0-9]*] req-[0-9]*' "$work"/task-*.log | awk '{print $2}' | sort)
[ "$(echo "$ran" | wc -l)" -eq 8 ] && [ "$(echo "$ran" | uniq -d | wc -l)" -eq 0 ] || {
    echo "requests run: $ran"; exit 1; }
entries=$(ls "$out/.reference-cache" | grep -c '\.safetensors$')
misses=$(grep -ho '"misses": [0-9]*' "$out"/*/manifest.json | awk '{s += $2} END {print s}')
echo "reference cache entries: $entries; references computed: $misses"
[ "$entries" -eq 2 ] && [ "$misses" -eq 2 ] || { echo "expected each of 2 subjects computed once"; exit 1; }
stamp "ok: 8 requests over 4 array tasks, each exactly once"
rm -rf "$work"
