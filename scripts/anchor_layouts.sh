#!/bin/bash
# The CPU anchor (issue 26): kdlab against PyTorch eager in both layouts, the "best eager",
# alternating, 3 rounds; each line is round|model|kdlab img/s|PyTorch contiguous|PyTorch channels-last.
# Run it on an idle machine (docs/performance.md, "The anchor on an idle machine").
K=${K:-$(pwd)/target/release/kdlab}
P=${P:-python3}
R=${R:-../shared/bench/pytorch_ref.py}
ips() { python3 -c "import json,sys;print(json.loads(sys.stdin.read().strip().splitlines()[-1])['img_per_s'])"; }
for r in 1 2 3; do
  for m in "cnn_w1 1x28x28 10" "cnn_w2 1x28x28 10" "cnn_w4 1x28x28 10" "cnn_w8 1x28x28 10" "resnet8 3x32x32 100" "resnet20 3x32x32 100"; do
    set -- $m; F="--model $1 --input $2 --classes $3 --threads 2 --batch 128"
    k=$($K bench --json $F | ips)
    c=$($P $R $F | ips)
    l=$($P $R $F --channels-last | ips)
    echo "$r|$1|$k|$c|$l"
  done
done
