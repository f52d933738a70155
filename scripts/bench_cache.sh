#!/usr/bin/env bash
# The cost of distillation with the teacher-logit cache against training the student alone
# (docs/performance.md): a resnet8 student, resnet20 and resnet110 teachers, interleaved rounds.
#   scripts/bench_cache.sh [ROUNDS] [WORKDIR]        (defaults: 3, ./bench-cache)
# The teachers train one epoch on the embedded subset: their weights do not change the cost.
set -euo pipefail
rounds=${1:-3}
work=${2:-bench-cache}
kdlab=${KDLAB:-${CARGO_TARGET_DIR:-$HOME/.cache/kdlab-target}/release/kdlab}
common=(--data fashion-mnist-mini --augment false --threads 2 --seed 0 --quiet)
mkdir -p "$work" && cd "$work"
for t in resnet20 resnet110; do
  [ -f "t-$t/run.json" ] || "$kdlab" train --model "$t" "${common[@]}" --epochs 1 --out "t-$t"
  /usr/bin/time -f "cache build for $t: %e s" "$kdlab" cache build --run "t-$t" --augment false --threads 2 >/dev/null
done
wall() { python3 -c "import json,sys; print(json.load(open(sys.argv[1] + '/run.json'))['wall_time_s'])" "$1"; }
for r in $(seq "$rounds"); do
  rm -rf alone kd-r20 kd-r110
  "$kdlab" train --model resnet8 "${common[@]}" --epochs 3 --out alone
  "$kdlab" distill --teacher t-resnet20 --student resnet8 --method kd "${common[@]}" --epochs 3 --teacher-cache --out kd-r20
  "$kdlab" distill --teacher t-resnet110 --student resnet8 --method kd "${common[@]}" --epochs 3 --teacher-cache --out kd-r110
  a=$(wall alone); b=$(wall kd-r20); c=$(wall kd-r110)
  python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); print(f'round $r: alone {a:.1f} s, kd from resnet20 (cache) {b:.1f} s ({b/a:.2f}x), kd from resnet110 (cache) {c:.1f} s ({c/a:.2f}x)')" "$a" "$b" "$c"
done
rm -rf kd-live
"$kdlab" distill --teacher t-resnet110 --student resnet8 --method kd "${common[@]}" --epochs 1 --out kd-live
python3 -c "import sys; print(f'kd from resnet110 with the live teacher: {float(sys.argv[1]):.1f} s for 1 epoch')" "$(wall kd-live)"
