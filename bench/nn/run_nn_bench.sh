#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds hir::nn's benchmarks (Release, -march=native) and runs them beside the PyTorch peers in one script run,
# then prints one table: training-step tokens/s and GFLOP/s on 1 and 2 threads (hir with OpenBLAS and with its default
# GEMM, i.e. hir's AVX-512 kernel, or Eigen on CPUs without AVX-512; PyTorch 1.13 at its best settings), the GEMM
# rate at the model's shapes and the step's fraction of it, allocations per step, peak RSS beside the layouts' total,
# KV-cache generation tokens/s beside PyTorch, and the transformer work of one RL step of hir_train's model
# (BM_RLStep).
#
# Usage: bench/nn/run_nn_bench.sh [build-dir]   (default build/nn-bench; MIN_TIME=seconds per benchmark, default 3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${1:-$root/build/nn-bench}"
min_time="${MIN_TIME:-3}"
peers="${HIR_SHARED_DIR:-$root/../shared}/peers/torch-kernels"
out="$build/nn-bench-results"
mkdir -p "$out"

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHIR_BUILD_BENCHMARKS=ON -DHIR_BUILD_TESTS=OFF \
  -DHIR_BUILD_EXAMPLES=OFF -DHIR_BUILD_APPS=OFF -DHIR_DEVICE_SYSTEM=OFF >/dev/null
cmake --build "$build" --target bench_nn bench_nn_blas -j2 >/dev/null

# Best settings for every OpenBLAS user (hir's BLAS build and PyTorch alike): AVX-512 kernels, one OpenBLAS thread
# (the callers split the work), no allocator trimming. OpenBLAS 0.3.21 does not recognize every AVX-512 CPU (on some
# machines it falls back to its "Prescott" SSE3 kernels at ~1/5 speed), so name the kernel set explicitly; override
# with HIR_OPENBLAS_CORETYPE.
coretype="${HIR_OPENBLAS_CORETYPE:-}"
if [[ -z "$coretype" ]]; then
  if grep -q avx512f /proc/cpuinfo; then coretype=SkylakeX; else coretype=Haswell; fi
fi
best=(env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE="$coretype" OPENBLAS_NUM_THREADS=1
      GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=1073741824)
py=/usr/bin/python3

run_hir() { # exe filter tag
  "${best[@]}" "$build/bench/nn/$1" --benchmark_filter="$2" --benchmark_min_time="$min_time" \
    --benchmark_out="$out/$3.json" --benchmark_out_format=json >/dev/null
}
for t in 1 2; do
  run_hir bench_nn_blas "BM_TrainStep/threads:$t/" "train_blas_$t"
  /usr/bin/time -f "%M" -o "$out/torch_train_rss_$t.txt" "${best[@]}" $py "$peers/torch_gpt_bench.py" --threads "$t" \
    --runs 20 >"$out/torch_train_$t.txt"
  run_hir bench_nn "BM_TrainStep/threads:$t/" "train_eigen_$t"
  run_hir bench_nn_blas "BM_MatmulLayers/threads:$t/" "gemm_blas_$t"
  run_hir bench_nn "BM_MatmulLayers/threads:$t/" "gemm_eigen_$t"
  run_hir bench_nn_blas "BM_Generate/threads:$t/" "gen_blas_$t"
  run_hir bench_nn "BM_Generate/threads:$t/" "gen_eigen_$t"
  "${best[@]}" $py "$here/torch_generate_bench.py" --threads "$t" >"$out/torch_gen_$t.txt"
  run_hir bench_nn "BM_RLStep/threads:$t/part:0" "rl_default_$t"
done

CORETYPE="$coretype" $py - "$out" <<'EOF'
import json, re, sys, os
out = sys.argv[1]
def bench(name):
    with open(os.path.join(out, name + ".json")) as f:
        b = json.load(f)["benchmarks"][0]
    return b
def torch_result(name, key):
    with open(os.path.join(out, name)) as f:
        for line in f:
            if line.startswith("RESULT") and key in line.split()[1]:
                return float(re.search(r"median=\s*([0-9.]+)", line).group(1))
    return float("nan")
print("hir::nn vs PyTorch 1.13 (best settings, OPENBLAS_CORETYPE=" + os.environ.get("CORETYPE", "?") + "), "
      "config V96 ctx128 C128 L4 H4, batch 32 x 128 = 4096 tokens/step")
print()
print(f"{'training step':<34s} {'1 thread':>14s} {'2 threads':>14s}")
rows = {}
for t in (1, 2):
    tb, te = bench(f"train_blas_{t}"), bench(f"train_eigen_{t}")
    gb, ge = bench(f"gemm_blas_{t}"), bench(f"gemm_eigen_{t}")
    tt = torch_result(f"torch_train_{t}.txt", "tokens_per_s")
    tg = torch_result(f"torch_train_{t}.txt", "gflops")
    with open(os.path.join(out, f"torch_train_rss_{t}.txt")) as f:
        trss = float(f.read().split()[-1]) / 1024
    rows.setdefault("hir (OpenBLAS) tokens/s", []).append(f"{tb['tokens_per_s']:.0f}")
    rows.setdefault("hir (default GEMM) tokens/s", []).append(f"{te['tokens_per_s']:.0f}")
    rows.setdefault("PyTorch tokens/s", []).append(f"{tt:.0f}")
    rows.setdefault("speed-up hir (OpenBLAS) / PyTorch", []).append(f"{tb['tokens_per_s'] / tt:.2f}x")
    rows.setdefault("speed-up hir (default GEMM) / PyTorch", []).append(f"{te['tokens_per_s'] / tt:.2f}x")
    rows.setdefault("hir (OpenBLAS) GFLOP/s", []).append(f"{tb['GFLOP_per_s']:.1f}")
    rows.setdefault("PyTorch GFLOP/s", []).append(f"{tg:.1f}")
    rows.setdefault("GEMM rate, model shapes (OpenBLAS)", []).append(f"{gb['GFLOP_per_s']:.1f}")
    rows.setdefault("GEMM rate, model shapes (default GEMM)", []).append(f"{ge['GFLOP_per_s']:.1f}")
    rows.setdefault("step / GEMM rate (OpenBLAS)", []).append(f"{tb['GFLOP_per_s'] / gb['GFLOP_per_s']:.0%}")
    rows.setdefault("step / GEMM rate (default GEMM)", []).append(f"{te['GFLOP_per_s'] / ge['GFLOP_per_s']:.0%}")
    rows.setdefault("fwd / bwd / AdamW ms (OpenBLAS)", []).append(
        f"{tb['fwd_ms']:.1f}/{tb['bwd_ms']:.1f}/{tb['opt_ms']:.1f}")
    rows.setdefault("allocs >= 128 KiB per step (OpenBLAS)", []).append(f"{tb['large_allocs']:.2f}")
    rows.setdefault("allocs >= 128 KiB per step (default GEMM)", []).append(f"{te['large_allocs']:.2f}")
    rows.setdefault("allocations per step (OpenBLAS)", []).append(f"{tb['allocs']:.2f}")
    rows.setdefault("layouts' total MiB", []).append(f"{tb['layout_MiB']:.1f}")
    rows.setdefault("peak RSS MiB hir (OpenBLAS)", []).append(f"{tb['peak_rss_MiB']:.1f}")
    rows.setdefault("peak RSS / layouts", []).append(f"{tb['peak_rss_MiB'] / tb['layout_MiB']:.2f}")
    rows.setdefault("peak RSS MiB PyTorch", []).append(f"{trss:.1f}")
for k, v in rows.items():
    print(f"{k:<38s} {v[0]:>10s} {v[1]:>14s}")
print()
print(f"{'generation, 256 x 64 new tokens':<34s} {'1 thread':>14s} {'2 threads':>14s}")
rows = {}
for t in (1, 2):
    gb, ge = bench(f"gen_blas_{t}"), bench(f"gen_eigen_{t}")
    tt = torch_result(f"torch_gen_{t}.txt", "torch_generate")
    rows.setdefault("hir (OpenBLAS) new tokens/s", []).append(f"{gb['new_tokens_per_s']:.0f}")
    rows.setdefault("hir (default GEMM) new tokens/s", []).append(f"{ge['new_tokens_per_s']:.0f}")
    rows.setdefault("PyTorch KV-cache loop tokens/s", []).append(f"{tt:.0f}")
    rows.setdefault("speed-up hir (OpenBLAS) / PyTorch", []).append(f"{gb['new_tokens_per_s'] / tt:.2f}x")
    rows.setdefault("speed-up hir (default GEMM) / PyTorch", []).append(f"{ge['new_tokens_per_s'] / tt:.2f}x")
    rows.setdefault("allocs >= 128 KiB per call (OpenBLAS)", []).append(f"{gb['large_allocs']:.2f}")
    rows.setdefault("allocs >= 128 KiB per call (default GEMM)", []).append(f"{ge['large_allocs']:.2f}")
for k, v in rows.items():
    print(f"{k:<38s} {v[0]:>10s} {v[1]:>14s}")
print()
print("hir_train's model (V363 ctx32 C96 L3 H4), one RL step's transformer work: generate 128 rows x 20 new tokens, "
      "reference forward 128 x 30, 2 x (forward + backward + AdamW) on 64 x 30")
rows = {}
for t in (1, 2):
    r = bench(f"rl_default_{t}")
    rows.setdefault("RL step ms (default GEMM)", []).append(f"{r['step_ms']:.1f}")
    rows.setdefault("generate / reference / update ms", []).append(
        f"{r['gen_ms']:.1f}/{r['ref_ms']:.1f}/{r['update_ms']:.1f}")
for k, v in rows.items():
    print(f"{k:<38s} {v[0]:>10s} {v[1]:>14s}")
EOF
