#!/usr/bin/env bash
# The demo study on a real one-node Slurm cluster (`make test-slurm`; ~20 min on 2 busy cores):
#
#   1. `kdlab sweep studies/demo.toml --emit-slurm DIR` and `DIR/submit.sh`;
#   2. one teacher's array task is cancelled mid-run (scancel), which also cancels the dependent
#      student array (--kill-on-invalid-dep); the script waits for the queue to empty;
#   3. the arrays are emitted again, hold exactly the runs not finished, are submitted, and run;
#   4. `kdlab sweep` imports the runs: all done, none failed, none trained twice (each history
#      has one row per epoch), and the report's results equal a local sweep's, run for run.
#
# It starts munged, slurmctld and slurmd itself (scripts/slurm-cluster.sh) in a temporary
# directory and stops them on every exit. KDLAB: the binary under test; KEEP=1 keeps the
# temporary directory (logs, the squeue snapshots in squeue.log).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
KDLAB=${KDLAB:-${CARGO_TARGET_DIR:-$HOME/.cache/kdlab-target}/release/kdlab}
[[ -x $KDLAB ]] || { echo "test-slurm: no kdlab binary at $KDLAB (make build)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/kdlab-test-slurm.XXXXXX)
cluster=$tmp/cluster

finish() {
    local rc=$?
    if [[ -n ${SLURM_CONF:-} ]]; then
        scancel --user "$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    "$here/slurm-cluster.sh" stop "$cluster" || true
    if [[ $rc != 0 ]]; then
        echo "test-slurm: FAILED (rc $rc); logs in $tmp" >&2
    elif [[ ${KEEP:-0} == 1 ]]; then
        echo "test-slurm: kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

say() { echo "test-slurm: $*"; }
fail() { echo "test-slurm: FAILED: $*" >&2; exit 1; }

# The array tasks run the binary --emit-slurm names (its own path): a copy, so that a rebuild
# while the test runs does not change it.
cp "$KDLAB" "$tmp/kdlab"
kdlab=$tmp/kdlab
study=$repo/studies/demo.toml

eval "$("$here/slurm-cluster.sh" start "$cluster")"
export SLURM_CONF
say "cluster up: $(sinfo -h -N -o '%N %c CPUs %t')"

# Waits until none of the jobs in the submit output is in the queue; snapshots squeue meanwhile.
wait_for_queue() {
    local jobs=$1 deadline=$((SECONDS + ${2:-3600}))
    while [[ -n $(squeue -h -j "$jobs" 2>/dev/null) ]]; do
        ((SECONDS < deadline)) || fail "jobs $jobs still queued after ${2:-3600} s: $(squeue)"
        { date -u +%T; squeue -j "$jobs"; } >> "$tmp/squeue.log"
        sleep 5
    done
}
jobs_of() { sed -n 's/.*: job \([0-9]*\)$/\1/p' "$1" | paste -sd, -; }

# 1. Emit and submit.
"$kdlab" sweep "$study" --out "$tmp/slurm" --emit-slurm "$tmp/arrays" | tee "$tmp/emit.txt"
grep -q "29 runs, each with 1 thread(s) on 1 CPU(s)" "$tmp/emit.txt" || fail "unexpected --emit-slurm summary"
"$tmp/arrays/submit.sh" | tee "$tmp/submit.txt"
jobs=$(jobs_of "$tmp/submit.txt")
teachers=$(sed -n 's/^teachers: job //p' "$tmp/submit.txt")

# 2. Cancel the third teacher's task once it has finished two epochs (and saved its checkpoint).
run3=$(dirname "$(sed -n 3p "$tmp/arrays/teachers.txt")")
deadline=$((SECONDS + 1800))
until [[ -f $run3/metrics.csv && $(wc -l < "$run3/metrics.csv") -ge 3 ]]; do
    ((SECONDS < deadline)) || fail "teacher task 3 did not reach epoch 2: $(squeue)"
    { date -u +%T; squeue -j "$jobs"; } >> "$tmp/squeue.log"
    sleep 2
done
squeue -j "$jobs" | tee "$tmp/squeue-before-cancel.txt"
scancel "${teachers}_3"
say "cancelled teacher task ${teachers}_3 after $(($(wc -l < "$run3/metrics.csv") - 1)) epochs"
wait_for_queue "$jobs"

# 3. Emit again: exactly the cancelled teacher and the students held back.
"$kdlab" sweep "$study" --out "$tmp/slurm" --emit-slurm "$tmp/arrays" | tee "$tmp/emit2.txt"
# (--kill-on-invalid-dep cancelled the whole student array, which waited for every teacher.)
grep -q "^27 runs" "$tmp/emit2.txt" || fail "the second --emit-slurm should hold the cancelled teacher and the 26 students"
[[ $(wc -l < "$tmp/arrays/teachers.txt") == 1 && $(cat "$tmp/arrays/teachers.txt") == "$run3/spec.json" ]] \
    || fail "the second teachers array is not exactly the cancelled run"
"$tmp/arrays/submit.sh" | tee "$tmp/submit2.txt"
jobs2=$(jobs_of "$tmp/submit2.txt")
sleep 3
squeue -j "$jobs2" | tee "$tmp/squeue-resubmitted.txt"
wait_for_queue "$jobs2"
grep -q "resuming after epoch" "$tmp/arrays/teachers-1.out" || fail "the cancelled teacher did not resume from its checkpoint"

# 4. Import, check, and compare with a local sweep of the same study with the same threads.
"$kdlab" sweep "$study" --out "$tmp/slurm" --dry-run | tee "$tmp/import.txt"
grep -q "29 runs planned, 0 to run" "$tmp/import.txt" || fail "not every run was imported as done"
"$kdlab" status "$tmp/slurm" | tee "$tmp/status.txt"
grep -q "^teacher *3 *0 *0 *0" "$tmp/status.txt" && grep -q "^student *26 *0 *0 *0" "$tmp/status.txt" \
    || fail "status is not 3 teachers and 26 students done"
for run in "$tmp/slurm/runs"/*/; do
    epochs=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['train']['epochs'])" "$run/spec.json")
    rows=$(($(wc -l < "$run/metrics.csv") - 1))
    [[ $rows == "$epochs" ]] || fail "$run: $rows epoch rows for $epochs epochs (lost or duplicated)"
    cut -d, -f1 "$run/metrics.csv" | tail -n +2 | sort -n | uniq -d | grep -q . && fail "$run: a repeated epoch"
done
say "local sweep of the same study (2 workers × 1 thread) ..."
"$kdlab" sweep "$study" --out "$tmp/local" --workers 2 --threads 1 --quiet > "$tmp/local.txt"
"$kdlab" report "$tmp/slurm" > /dev/null
"$kdlab" report "$tmp/local" > /dev/null
if ! diff "$tmp/local/report/results.csv" "$tmp/slurm/report/results.csv" > "$tmp/results.diff"; then
    fail "Slurm results differ from the local sweep's: $(wc -l < "$tmp/results.diff") diff lines in $tmp/results.diff"
fi
say "OK: 29 runs on Slurm (one teacher cancelled and resumed) equal the local sweep's, run for run ($(($(wc -l < "$tmp/slurm/report/results.csv") - 1)) rows)"
