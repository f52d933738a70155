#!/bin/bash
# kdlab on a GPU machine, in one go (at most ~8 minutes): the tests that need CUDA, training
# throughput against PyTorch eager and torch.compile on the same GPU, and a 4-worker sweep of the
# demo study on one GPU. Writes one results file; docs/performance.md ("GPU check") says how to
# read it.
#
# 1. On the build machine (no GPU needed):
#      scripts/gpu_check.sh --prepare gpu-carry
#    builds the release binary and the test binary of tests/gpu.rs, and copies them (stripped,
#    ~25 MB) with the PyTorch reference script into gpu-carry/ (git-ignored).
# 2. On the GPU machine, from the repository root, with PyTorch 2.11 importable by --python:
#      scripts/gpu_check.sh --carried gpu-carry [--out gpu-check-results.md]
# 3. Without a GPU, everything but the CUDA calls (the same steps on the CPU, tiny sizes):
#      scripts/gpu_check.sh --dry-run [--carried gpu-carry | --kdlab BIN --test-bin BIN]
#
# Options: --python PY (default: $KDLAB_TORCH_VENV/bin/python, else python3), --reference
# pytorch_ref.py, --budget SECONDS (default 480: torch.compile runs come last and are skipped
# once the budget is spent), --rounds N (alternating kdlab/PyTorch eager rounds, default 2),
# --models "resnet20 resnet56 wrn_40_2" (the default; a dry run's: resnet20, 1 round).
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dry=0 prepare="" carried="" out="gpu-check-results.md" budget=480 rounds="" models=""
kdlab="" testbin="" reference="" python=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --prepare) prepare=$2; shift ;;
        --carried) carried=$2; shift ;;
        --out) out=$2; shift ;;
        --kdlab) kdlab=$2; shift ;;
        --test-bin) testbin=$2; shift ;;
        --reference) reference=$2; shift ;;
        --python) python=$2; shift ;;
        --budget) budget=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --models) models=$2; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "gpu_check.sh: $*" >&2; exit 1; }

if [ -n "$prepare" ]; then
    cd "$here" || exit 1
    cargo build --release || die "cargo build failed"
    tb=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\/gpu-[0-9a-f]*\)".*/\1/p' | tail -1)
    [ -x "$tb" ] || die "could not find the test binary of tests/gpu.rs"
    target=${CARGO_TARGET_DIR:-$HOME/.cache/kdlab-target}
    mkdir -p "$prepare"
    strip -o "$prepare/kdlab" "$target/release/kdlab" && strip -o "$prepare/gpu-tests" "$tb" || die "strip failed"
    cp "$here/../shared/bench/pytorch_ref.py" "$prepare/pytorch_ref.py" 2>/dev/null ||
        cp "$here/shared/bench/pytorch_ref.py" "$prepare/pytorch_ref.py" || die "no shared/bench/pytorch_ref.py"
    du -sh "$prepare"
    echo "carry $prepare to the GPU machine and run: scripts/gpu_check.sh --carried $prepare"
    exit 0
fi

if [ -n "$carried" ]; then
    kdlab=${kdlab:-$carried/kdlab}
    testbin=${testbin:-$carried/gpu-tests}
    reference=${reference:-$carried/pytorch_ref.py}
fi
kdlab=${kdlab:-${CARGO_TARGET_DIR:-$HOME/.cache/kdlab-target}/release/kdlab}
reference=${reference:-$here/../shared/bench/pytorch_ref.py}
if [ -z "$python" ]; then
    venv=${KDLAB_TORCH_VENV:-$HOME/.cache/kdlab-torch-venv}
    if [ -x "$venv/bin/python" ]; then python=$venv/bin/python; else python=python3; fi
fi
[ -x "$kdlab" ] || die "no kdlab binary at $kdlab (build it, or give --carried/--kdlab)"
[ -f "$reference" ] || die "no PyTorch reference script at $reference"
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) ||
    die "$python cannot import torch (give --python)"
# The binary's rpath names the build machine's LibTorch; elsewhere the Python's torch provides it.
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$kdlab" --version > /dev/null || die "$kdlab does not run here (LibTorch at $torch_lib?)"

# A dry run exercises every command and the results file on the CPU, at sizes a busy 2-core
# machine gets through in a few minutes: one model, one round, batch 8.
if [ $dry = 1 ]; then
    dev=cpu batch=8 steps=1 warmup=1 threads=2
    models=${models:-resnet20} rounds=${rounds:-1}
else
    dev=cuda batch=128 steps=50 warmup=20 threads=4
    models=${models:-"resnet20 resnet56 wrn_40_2"} rounds=${rounds:-2}
fi
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
raw="$work/raw.jsonl"
: > "$raw"
log() { echo "[$(elapsed)s] $*" >&2; }
# One JSON line per measurement: {"section", ...} merged with the tool's own JSON line.
record() { # section json-or-error
    "$python" -c 'import json,sys; d=json.loads(sys.argv[2]) if sys.argv[2].startswith("{") else {"error": sys.argv[2]}; d["section"]=sys.argv[1]; d.update(json.loads(sys.argv[3])); print(json.dumps(d))' \
        "$1" "$2" "$3" >> "$raw"
}
last_json() { grep '^{' | tail -1; }

# --- the machine ------------------------------------------------------------------------------
if [ $dry = 1 ]; then
    gpu="none (dry run: every step on the CPU, tiny sizes, no torch.compile)"
else
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
    [ -n "$gpu" ] || die "nvidia-smi finds no GPU; use --dry-run on a machine without one"
fi
torch_v=$("$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')
log "GPU: $gpu; PyTorch $torch_v; kdlab $("$kdlab" --version)"

# --- 1. the tests that need CUDA (#[ignore = "needs CUDA"], named cuda_*) ------------------------
tests_line="no test binary given (--test-bin or --carried)"
if [ -n "$testbin" ]; then
    [ -x "$testbin" ] || die "no test binary at $testbin"
    listed=$("$testbin" --list --ignored 2>/dev/null | grep -c '^cuda_.*: test$')
    [ "$listed" -ge 1 ] || die "$testbin lists no cuda_ tests"
    if [ $dry = 1 ]; then
        tests_line="$listed CUDA tests listed (dry run: not run)"
    else
        log "running $listed CUDA tests"
        if t=$("$testbin" --ignored cuda_ --test-threads 1 2>&1); then status=passed; else status=FAILED; fi
        tests_line="$listed CUDA tests $status: $(echo "$t" | grep '^test result' | tail -1)"
        echo "$t" > "$work/tests.txt"
    fi
fi
log "tests: $tests_line"

# --- 2. training throughput, kdlab against PyTorch eager, alternating --------------------------
bench_kdlab() { # model amp layout
    "$kdlab" bench --json --device "$dev" --model "$1" --amp "$2" --memory-format "$3" --mode train \
        --batch $batch --input 3x32x32 --classes 100 --steps $steps --warmup $warmup --threads $threads 2>&1 | last_json
}
bench_torch() { # model amp layout [extra]
    local cl=""; [ "$3" = channels-last ] && cl=--channels-last
    "$python" "$reference" --device "$dev" --model "$1" --amp "$2" $cl ${4:-} --mode train --batch $batch \
        --input 3x32x32 --classes 100 --steps $steps --warmup $warmup --threads $threads 2>&1 | last_json
}
amps="off bf16"
for model in $models; do
    for amp in $amps; do
        for round in $(seq 1 "$rounds"); do
            for layout in contiguous channels-last; do
                meta="{\"model\":\"$model\",\"amp\":\"$amp\",\"layout\":\"$layout\",\"round\":$round}"
                r=$(bench_kdlab "$model" "$amp" "$layout"); record kdlab "${r:-kdlab bench failed}" "$meta"
                r=$(bench_torch "$model" "$amp" "$layout"); record eager "${r:-pytorch_ref.py failed}" "$meta"
            done
        done
        log "throughput $model amp=$amp done"
    done
done

# --- 3. a 4-worker sweep of the demo study on one GPU -----------------------------------------
if [ $dry = 1 ]; then
    s=$("$kdlab" sweep "$here/studies/demo.toml" --out "$work/demo" --device cpu --dry-run 2>&1)
    rc=$?
    planned=$(echo "$s" | sed -n 's/.*: \([0-9]*\) runs planned.*/\1/p' | head -1)
    record sweep "{\"dry_run\":true,\"rc\":$rc,\"planned\":${planned:-0}}" '{}'
else
    t0=$(date +%s)
    s=$("$kdlab" sweep "$here/studies/demo.toml" --out "$work/demo" --devices 0 --workers-per-device 4 --quiet 2>&1)
    rc=$?
    wall=$(( $(date +%s) - t0 ))
    done_line=$(echo "$s" | grep -E '[0-9]+ of [0-9]+ runs done' | tail -1)
    device=$(grep -ho '"device": *"[^"]*"' "$work"/demo/runs/*/run.json 2>/dev/null | sort | uniq -c | tr '\n' ';' | tr -s ' ')
    "$kdlab" report "$work/demo" > /dev/null 2>&1 && cp "$work/demo/report/results.csv" "$work/demo-results.csv"
    record sweep "$("$python" -c 'import json,sys; print(json.dumps({"rc": int(sys.argv[1]), "wall_s": float(sys.argv[2]), "summary": sys.argv[3], "devices": sys.argv[4]}))' "$rc" "$wall" "$done_line" "$device")" '{}'
fi
log "sweep: rc $rc ${done_line:-}"

# --- 4. torch.compile, last, within the time budget ---------------------------------------------
for model in $models; do
    for amp in $amps; do
        meta="{\"model\":\"$model\",\"amp\":\"$amp\",\"layout\":\"channels-last\",\"round\":1}"
        if [ $dry = 1 ]; then
            record compile "skipped (dry run)" "$meta"
        elif [ "$(elapsed)" -ge "$budget" ]; then
            record compile "skipped (time budget of ${budget}s spent)" "$meta"
        else
            left=$(( budget - $(elapsed) ))
            r=$(timeout "$left" bash -c "$(declare -f bench_torch last_json); python='$python' reference='$reference' dev=$dev batch=$batch steps=$steps warmup=$warmup threads=$threads bench_torch $model $amp channels-last --compile")
            record compile "${r:-torch.compile run failed or timed out}" "$meta"
        fi
    done
done

# --- the results file ---------------------------------------------------------------------------
"$python" - "$raw" "$out" "$gpu" "$torch_v" "$tests_line" "$(elapsed)" "$dry" "$batch" <<'EOF'
import json, statistics, sys
raw, out, gpu, torch_v, tests, secs, dry, batch = sys.argv[1:]
rows = [json.loads(l) for l in open(raw)]
def med(section, model, amp, layout=None):
    v = [r["img_per_s"] for r in rows if r["section"] == section and r["model"] == model and r["amp"] == amp
         and (layout is None or r["layout"] == layout) and "img_per_s" in r]
    return statistics.median(v) if v else None
def best(section, model, amp):
    c = {l: med(section, model, amp, l) for l in ("contiguous", "channels-last")}
    c = {l: v for l, v in c.items() if v}
    return max(c.items(), key=lambda kv: kv[1]) if c else (None, None)
f = lambda x: "–" if x is None else f"{x:.0f}"
ratio = lambda a, b: "–" if not a or not b else f"{a / b:.2f}"
lines = [f"# kdlab GPU check{' (DRY RUN on the CPU: not GPU numbers)' if dry == '1' else ''}", "",
         f"- GPU: {gpu}", f"- PyTorch: {torch_v}", f"- tests: {tests}", f"- wall time of the check: {secs} s", "",
         f"## Training throughput (images/s, batch {batch}, 3x32x32, 100 classes; medians of alternating rounds)", "",
         "| model | amp | kdlab (best layout) | PyTorch eager (best layout) | eager compile | kdlab / eager | kdlab / compile |",
         "|---|---|---|---|---|---|---|"]
for model in dict.fromkeys(r["model"] for r in rows if "model" in r):
    for amp in dict.fromkeys(r["amp"] for r in rows if r.get("model") == model):
        kl, k = best("kdlab", model, amp)
        el, e = best("eager", model, amp)
        c = med("compile", model, amp)
        lines.append(f"| {model} | {amp} | {f(k)} ({kl}) | {f(e)} ({el}) | {f(c)} | {ratio(k, e)} | {ratio(k, c)} |")
lines += ["", "## Demo study, 4 workers on one GPU", ""]
lines += [f"- {json.dumps({k: v for k, v in r.items() if k != 'section'})}" for r in rows if r["section"] == "sweep"]
lines += ["", "## Every measurement (one JSON line each)", "", "```"] + [json.dumps(r) for r in rows] + ["```", ""]
open(out, "w").write("\n".join(lines))
errors = [r for r in rows if "error" in r and not r["error"].startswith("skipped")]
print(f"wrote {out} ({len(rows)} measurements, {len(errors)} failed)")
sys.exit(1 if errors else 0)
EOF
rc_summary=$?
[ -f "$work/tests.txt" ] && cp "$work/tests.txt" "${out%.md}-tests.txt"
rm -rf "$work"
exit $rc_summary
