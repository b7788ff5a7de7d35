#!/usr/bin/env bash
# The demo from a fresh clone: install what is missing, build the nucleus
# program, describe the bundled dump and sample it.
# Usage: scripts/demo.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"

scripts/setup.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$(nproc)" --target nucleus_cli

# data/demo.npy: 8 rows x 32000 float16 logits, peaked, medium and flat rows
# (made by nucleus_make_demo --rows 8 --vocab 32000 --dtype f16 --seed 1).
echo
"$build/tools/nucleus" inspect data/demo.npy --top 3
echo
"$build/tools/nucleus" sample data/demo.npy --top-p 0.9 --temperature 0.8 --seed 42 --logprobs 3
