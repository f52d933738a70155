#!/bin/bash
# Cost of each method against the student alone, side by side in one run (3 rounds, interleaved).
# "live": the teacher runs on every batch; "cache": the teacher-logit cache; "store": a feature
# method's teacher taps filled once into memory (--teacher-cache on an unaugmented transfer set).
set -e
K=${K:-$(pwd)/target/release/kdlab}
W=${W:-$(mktemp -d)}; rm -rf $W; mkdir -p $W; cd $W
D="--data fashion-mnist-mini --train-subset 300 --augment false --threads 2 --quiet"
$K train --model resnet8 --epochs 1 $D --out t8 >/dev/null
$K train --model resnet20 --epochs 1 $D --out t20 >/dev/null
A="--student cnn_w1 --teacher t8"
B="--student resnet8 --teacher t20"
declare -a NAMES CMDS
add() { NAMES+=("$1"); CMDS+=("$2"); }
add "A ce" "train --model cnn_w1"
add "A kd cache" "distill $A --method kd --teacher-cache"
add "A kd live" "distill $A --method kd"
add "A ctkd cache" "distill $A --method ctkd --teacher-cache"
add "A kd cache dot" "distill $A --method kd --teacher-cache --optimizer dot"
add "A fitnet live" "distill $A --method fitnet"
add "A at live" "distill $A --method at --stages 2"
add "A crd live" "distill $A --method crd"
add "A fitnet store" "distill $A --method fitnet --teacher-cache"
add "A at store" "distill $A --method at --stages 2 --teacher-cache"
add "A crd store" "distill $A --method crd --teacher-cache"
add "B ce" "train --model resnet8"
add "B kd live" "distill $B --method kd"
add "B sdd live" "distill $B --method sdd"
add "B reviewkd live" "distill $B --method reviewkd"
add "B kd cache" "distill $B --method kd --teacher-cache"
add "B sdd store" "distill $B --method sdd --teacher-cache"
add "B reviewkd store" "distill $B --method reviewkd --teacher-cache"
for r in 1 2 3; do
  for i in "${!NAMES[@]}"; do
    out="run-$r-$i"
    $K ${CMDS[$i]} --epochs 4 $D --out $out >/dev/null 2>$out.err || { echo "FAILED ${NAMES[$i]}: $(tail -2 $out.err)"; continue; }
    ips=$(python3 -c "
import csv;rows=list(csv.DictReader(open('$out/metrics.csv')));v=[float(r['images_per_s']) for r in rows[1:4]];print(round(sum(v)/len(v)))")
    echo "$r|${NAMES[$i]}|$ips"
  done
done
