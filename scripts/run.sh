#!/usr/bin/env bash
# The main job. Builds hir's release configuration and runs the GRPO/HiR walkthrough example, which builds a realistic
# batch (groups of rollouts with per-constraint verdicts and token log-probs) and prints, for every advantage
# estimator and policy loss, the advantages and the loss with a short explanation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="/usr/local/cuda/bin:$PATH"
cmake --preset release >/dev/null
cmake --build --preset release --target grpo_toy -j "$(nproc)" >/dev/null
./build/release/examples/grpo_toy/grpo_toy "$@"
