#!/usr/bin/env bash
# Coverage-guided fuzzing of kdlab's file readers with cargo-fuzz (libFuzzer), for a bounded time.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on a stable toolchain.
# Crashes land in fuzz/artifacts/<target>/; fix them and add the input as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
venv=${KDLAB_TORCH_VENV:-$HOME/.cache/kdlab-torch-venv}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" RUSTC_BOOTSTRAP=1
# The fuzz binaries link LibTorch (through the kdlab crate) without kdlab's rpath.
torch_lib=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for target in idx cifar npy pth pickle image image_cache topk_cache; do
  cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096
done
