#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (run it where one is lent; a few minutes on 16 cores):
#   1. builds the CUDA configuration (nvcc, sm_90 by default; CUDA_ARCH=native or another value overrides) and runs
#      every GPU test with HIR_REQUIRE_GPU=1, so a missing or broken GPU fails instead of skipping;
#   2. the same with HIR_ENABLE_CUB=OFF, so the portable Thrust paths are tested on the GPU too;
#   3. builds and runs the device benchmarks (CUDA events) and prints a table of GB/s and the fraction of the
#      device-to-device copy bandwidth measured in the same run.
# Output goes to stdout and, when $OUT is set, to $OUT/gpu_report.txt (record it in docs/performance.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
arch="${CUDA_ARCH:-90}"
jobs=$(nproc)
report="${OUT:-build}/gpu_report.txt"
mkdir -p "$(dirname "$report")"
exec > >(tee "$report") 2>&1
status=0
echo "hir GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
for cub in ON OFF; do
  dir="build/gpu-cub-${cub}"
  echo "=== tests, HIR_ENABLE_CUB=${cub} ==="
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHIR_DEVICE_SYSTEM=CUDA -DCMAKE_CUDA_ARCHITECTURES="$arch" \
        -DHIR_ENABLE_CUB="$cub" -DHIR_BUILD_APPS=OFF -DHIR_BUILD_EXAMPLES=OFF >/dev/null || { status=1; continue; }
  cmake --build "$dir" -j "$jobs" >"$dir.log" 2>&1 || { grep -E "error" "$dir.log" | head -30; status=1; continue; }
  HIR_REQUIRE_GPU=1 ctest --test-dir "$dir" -L gpu --output-on-failure || status=1
done
echo "=== device benchmarks ==="
dir="build/gpu-bench"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHIR_DEVICE_SYSTEM=CUDA -DCMAKE_CUDA_ARCHITECTURES="$arch" \
      -DHIR_BUILD_BENCHMARKS=ON -DHIR_BUILD_TESTS=OFF -DHIR_BUILD_APPS=OFF -DHIR_BUILD_EXAMPLES=OFF >/dev/null &&
  cmake --build "$dir" -j "$jobs" >"$dir.log" 2>&1 || { grep -E "error" "$dir.log" | head -30; status=1; }
for exe in "$dir"/bench/*/bench_*_cuda; do
  [ -x "$exe" ] || continue
  "$exe" --benchmark_min_time=0.2 --benchmark_format=json --benchmark_out="$dir/$(basename "$exe").json" \
         --benchmark_out_format=json >/dev/null || status=1
done
python3 - "$dir" <<'PY'
import glob, json, re, sys
rows, copy = [], {}
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    for b in json.load(open(path)).get("benchmarks", []):
        name, bps = b["name"], b.get("bytes_per_second", 0) / 1e9
        n = re.search(r"N:(\d+)", name)
        if name.startswith("BM_DeviceCopy") and n:
            copy[n.group(1)] = bps
        rows.append((name, b["real_time"], b["time_unit"], bps, n.group(1) if n else None))
print(f"{'benchmark':70s} {'time':>12s} {'GB/s':>8s} {'of copy':>8s}")
for name, t, unit, bps, n in rows:
    frac = f"{bps / copy[n]:.0%}" if n in copy and bps else ""
    print(f"{name:70s} {t:10.1f}{unit:>2s} {bps:8.1f} {frac:>8s}")
PY
echo "gpu check: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
