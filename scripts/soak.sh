#!/usr/bin/env bash
# Soak test of a sweep: a study of many tiny runs (501 by default: a teacher `mlp_16x1` and 500
# students `mlp_32x1` — CE and KD at 9 temperatures, 50 seeds —, 1 epoch each on 50 training
# images of the embedded Fashion-MNIST subset, distilled through the teacher-logit cache) with
# `--workers 2`, while a reader runs `kdlab status` every second. Measured, not assumed:
#   - every planned run done exactly once: one directory, one attempt in its log, one history row
#     in metrics.csv, `done` in run.json and in the index; none lost, none failed, none duplicated;
#   - no `kdlab status` call failed and none said "database is locked" (nor did the sweep);
#   - the sweep's open file descriptors (/proc/PID/fd) and resident memory (VmRSS) flat: sampled
#     every second; the median of the last third of the soak may exceed the median of the first
#     third by SOAK_FD_SLACK descriptors and SOAK_RSS_SLACK_KB KiB at most. (Medians: a sample
#     taken while the sweep starts a worker sees its few short-lived descriptors — the log, the
#     exec-error pipe — which a leak would not explain; a leak moves the median.)
# Prints the measurements and exits 1 on any violation. About 5 minutes on 2 idle cores.
#
#   scripts/soak.sh                     # uses $CARGO_TARGET_DIR/release/kdlab (make build first)
#   SOAK_SEEDS=10 scripts/soak.sh       # a shorter run (101 runs; too short to judge the trends)
#   KDLAB=path/to/kdlab SOAK_KEEP=1 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KDLAB=${KDLAB:-${CARGO_TARGET_DIR:-$HOME/.cache/kdlab-target}/release/kdlab}
SEEDS=${SOAK_SEEDS:-50}
FD_SLACK=${SOAK_FD_SLACK:-1}
RSS_SLACK_KB=${SOAK_RSS_SLACK_KB:-2048}
[ -x "$KDLAB" ] || { echo "soak: no kdlab binary at $KDLAB (run make build, or set KDLAB)" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/kdlab-soak.XXXXXX")
[ -n "${SOAK_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
study="$work/soak.toml"
out="$work/study"
{
    echo 'name = "soak"'
    echo 'data = "fashion-mnist-mini"'
    echo 'train_subset = 5'
    echo "seeds = [$(seq -s ', ' 0 $((SEEDS - 1)))]"
    echo '[teachers]'
    echo 'models = ["mlp_16x1"]'
    echo 'epochs = 1'
    echo '[students]'
    echo 'models = ["mlp_32x1"]'
    echo 'epochs = 1'
    echo 'augment = false'
    echo 'teacher_cache = true'
    echo '[[methods]]'
    echo 'name = "ce"'
    echo '[[methods]]'
    echo 'name = "kd"'
    echo 'tau = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8]'
} >"$study"
planned=$("$KDLAB" sweep "$study" --out "$out" --dry-run | sed -n 's/.*: \([0-9]*\) runs planned.*/\1/p')
echo "soak: $planned runs planned in $out ($KDLAB)"

started=$(date +%s)
"$KDLAB" sweep "$study" --out "$out" --workers 2 --quiet >"$work/sweep.log" 2>&1 &
sweep=$!
samples="$work/samples.tsv" # seconds, status polls started, fds, rss_kb
mkdir "$work/polls"
polls=0
while kill -0 "$sweep" 2>/dev/null; do
    fds=$(ls "/proc/$sweep/fd" 2>/dev/null | wc -l) || fds=
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$sweep/status" 2>/dev/null) || rss=
    # A reader started every second, whether or not the last one has finished (one call takes
    # about a second: LibTorch loads), so two readers at a time are common.
    polls=$((polls + 1))
    (
        rc=0
        "$KDLAB" status "$out" >"$work/polls/$polls.out" 2>&1 || rc=$?
        echo "$rc" >"$work/polls/$polls.rc"
    ) &
    [ -n "$fds" ] && [ -n "$rss" ] && [ "$fds" -gt 0 ] && echo -e "$(($(date +%s) - started))\t$polls\t$fds\t$rss" >>"$samples"
    sleep 1
done
sweep_rc=0
wait "$sweep" || sweep_rc=$?
elapsed=$(($(date +%s) - started))
wait # the last readers
poll_failures=$(($(grep -Lx 0 "$work"/polls/*.rc | wc -l) + polls - $(ls "$work"/polls/*.rc | wc -l)))
grep -il 'locked' "$work"/polls/*.out >"$work/status.err" || true
for f in $(grep -Lx 0 "$work"/polls/*.rc); do cat "${f%.rc}.out"; done >>"$work/status.err"

fail=0
violation() { echo "VIOLATION: $*"; fail=1; }
[ "$sweep_rc" -eq 0 ] || violation "the sweep exited with $sweep_rc: $(tail -5 "$work/sweep.log")"
[ "$poll_failures" -eq 0 ] || violation "$poll_failures of $polls status calls failed: $(head -5 "$work/status.err")"
if grep -qi 'locked' "$work"/polls/*.out "$work/sweep.log"; then
    violation "'locked' was said: $(grep -hi locked "$work"/polls/*.out "$work/sweep.log" | head -3)"
fi

# Every planned run exactly once.
"$KDLAB" status "$out" >"$work/final.txt"
read -r s_done s_running s_failed s_queued < <(awk '$1 == "teacher" || $1 == "student" \
    {d += $2; r += $3; f += $4; q += $5} END {print d + 0, r + 0, f + 0, q + 0}' "$work/final.txt")
[ "$s_done" -eq "$planned" ] && [ "$s_running" -eq 0 ] && [ "$s_failed" -eq 0 ] && [ "$s_queued" -eq 0 ] ||
    violation "the index says done=$s_done running=$s_running failed=$s_failed queued=$s_queued of $planned"
dirs=0
bad_dirs=0
for d in "$out"/runs/*/; do
    dirs=$((dirs + 1))
    attempts=$(grep -c -- '--- kdlab sweep: attempt started' "$d/log.txt" || true)
    rows=$(($(wc -l <"$d/metrics.csv") - 1))
    if [ "$attempts" -ne 1 ] || [ "$rows" -ne 1 ] || ! grep -q '"status": "done"' "$d/run.json"; then
        bad_dirs=$((bad_dirs + 1))
        [ "$bad_dirs" -le 3 ] && violation "$d: $attempts attempts, $rows metrics rows, $(grep '"status"' "$d/run.json")"
    fi
done
[ "$dirs" -eq "$planned" ] || violation "$dirs run directories for $planned planned runs"
[ "$bad_dirs" -eq 0 ] || violation "$bad_dirs run directories were not trained exactly once"

# Flat descriptors and memory: the last third of the samples against the first third's maximum
# (the first samples, taken while the sweep plans and opens its index, are left out).
n=$(wc -l <"$samples")
[ "$n" -ge 30 ] || violation "only $n samples: the soak was too short to judge"
third() { # column, which third (1 or 3), statistic (max or median)
    awk -v n="$n" -v t="$2" 'NR > 3 && ((t == 1 && NR <= n / 3) || (t == 3 && NR > 2 * n / 3)) {print $'"$1"'}' \
        "$samples" | sort -n | awk -v s="$3" '{v[NR] = $1} END {print (s == "max") ? v[NR] : v[int((NR + 1) / 2)]}'
}
fd_first=$(third 3 1 median)
fd_last=$(third 3 3 median)
fd_max=$(awk 'NR > 3 && $3 > m {m = $3} END {print m + 0}' "$samples")
rss_first=$(third 4 1 median)
rss_last=$(third 4 3 median)
rss_max=$(awk 'NR > 3 && $4 > m {m = $4} END {print m + 0}' "$samples")
echo "soak: $planned runs in ${elapsed}s with 2 workers; $polls status polls, $poll_failures failed"
echo "soak: index: done=$s_done running=$s_running failed=$s_failed queued=$s_queued; $dirs run directories, $bad_dirs not trained exactly once"
echo "soak: sweep fds ($n samples, 1 a second): median in the first third $fd_first, in the last third $fd_last; max $fd_max"
echo "soak: sweep RSS: median in the first third ${rss_first} KiB, in the last third ${rss_last} KiB; max ${rss_max} KiB"
[ "$fd_last" -le $((fd_first + FD_SLACK)) ] || violation "descriptors grew: $fd_first → $fd_last"
[ "$rss_last" -le $((rss_first + RSS_SLACK_KB)) ] || violation "memory grew: $rss_first KiB → $rss_last KiB"
[ -z "${SOAK_KEEP:-}" ] || echo "soak: kept $work (samples.tsv: seconds, status polls started, fds, RSS KiB)"
if [ "$fail" -ne 0 ]; then
    echo "soak: FAILED"
    exit 1
fi
echo "soak: passed"
