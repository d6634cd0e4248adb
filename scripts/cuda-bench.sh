#!/usr/bin/env bash
# cuda-bench.sh — on a GPU machine: build the CUDA kernels with that
# machine's nvcc, check them against the CPU reference and time them
# (ds4-cuda-bench), and keep the logs in $OUT (default /tmp/cuda-bench).
#
#   scripts/cuda-bench.sh [ds4-cuda-bench options...]
#
# Builds with plain nvcc/cc commands (no make needed there) for the GPU's
# own architecture. Also saves per-kernel register/spill reports and a SASS
# instruction histogram, and, if ncu works, one profile of the largest
# matrix-vector kernel of each quant format.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda-bench}"
mkdir -p "$OUT"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
B=build-cuda-dev
mkdir -p "$B"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$OUT/gpu.txt"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
ARCH="-gencode arch=compute_${cap},code=sm_${cap}"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); arch sm_$cap; $("$NVCC" --version | tail -1)"
t0=$SECONDS
for f in src/quant/*.c src/common/error.c; do
    cc -O2 -std=gnu11 -pthread -c "$f" -o "$B/$(basename "$f" .c).o" &
done
"$NVCC" -O3 -std=c++17 -lineinfo $ARCH -Xptxas -v -c src/backend/cuda/cuda_kernels.cu -o "$B/cuda_kernels.o" \
    >"$OUT/ptxas.txt" 2>&1 &
"$NVCC" -O3 -std=c++17 -lineinfo $ARCH -c src/backend/cuda/cuda_bench.cu -o "$B/cuda_bench.o" &
wait
"$NVCC" $ARCH "$B"/*.o -lm -o "$B/ds4-cuda-bench" || { cat "$OUT/ptxas.txt"; exit 1; }
echo "built in $((SECONDS - t0)) s"
grep -E "registers|spill" "$OUT/ptxas.txt" | paste - - | sed -E 's/ +/ /g' | cut -c1-200 | head -40 >"$OUT/regs.txt"
if command -v cuobjdump >/dev/null; then
    cuobjdump --dump-sass "$B/cuda_kernels.o" >"$OUT/sass.txt" 2>&1
    grep -c LDGSTS "$OUT/sass.txt" | sed 's/^/LDGSTS count: /'
fi
"$B/ds4-cuda-bench" "$@" 2>&1 | tee "$OUT/bench.txt"
rc=$?
if command -v ncu >/dev/null && [ $# -eq 0 ]; then
    for c in "big iq2" "big q2_K" "attn_q_b"; do
        timeout 45 ncu --clock-control none --section SpeedOfLight --section Occupancy \
            --section MemoryWorkloadAnalysis -k regex:'k_matvec|k_moe' --launch-count 2 \
            "$B/ds4-cuda-bench" --only "$c" --reps 1 >"$OUT/ncu-${c// /_}.txt" 2>&1
        grep -E "k_matvec|k_moe|DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Compute \(SM\)" \
            "$OUT/ncu-${c// /_}.txt" | head -20
    done
fi
exit $rc
