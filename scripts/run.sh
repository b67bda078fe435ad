#!/usr/bin/env bash
# The main job: builds hir's release configuration and runs the end-to-end trainer's `compare` with its built-in
# defaults: a warm-started tiny GPT trained with HiR (authors' code preset) against GRPO with the binary ILA reward
# and GRPO with the dense CLA reward, at the same rollout budget. Prints the table and where the plot is
# (runs/compare/). Extra arguments go to `hir_train compare` (e.g. --seeds 1,2,3 --variants grpo_ila,hir_code
# -o runs/mine; a later -o wins).
# The walkthrough of every estimator and loss on one batch: build/release/examples/grpo_toy/grpo_toy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="/usr/local/cuda/bin:$PATH"
cmake --preset release >/dev/null
cmake --build --preset release --target hir_train grpo_toy -j "$(nproc)" >/dev/null
./build/release/apps/hir_train/hir_train compare -o runs/compare "$@"
