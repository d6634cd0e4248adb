#!/usr/bin/env bash
# cuda-bench.sh — on a GPU machine: build the CUDA kernels with that
# machine's nvcc, check them against the CPU reference and time them
# (ds4-cuda-bench), and keep the logs in $OUT (default /tmp/cuda-bench).
#
#   scripts/cuda-bench.sh [case names...]   (BENCH_ARGS="--reps 50" etc.)
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
read -r -a BENCH_ARGS <<<"${BENCH_ARGS:-}"
mkdir -p "$B"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$OUT/gpu.txt"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
ARCH="-gencode arch=compute_${cap},code=sm_${cap}"
echo "commit ${DS4_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}; arch sm_$cap; $("$NVCC" --version | tail -1)"
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
if command -v cuobjdump >/dev/null; then
    # Per kernel: its most frequent SASS instructions (the full dump is too big to keep).
    cuobjdump --dump-sass "$B/cuda_kernels.o" 2>&1 | awk '
        /Function :/ { if (f) dump(); f = $3; delete n; next }
        /^ +\/\*[0-9a-f]+\*\/ +[A-Z@]/ { op = $2; if (op ~ /^@/) op = $3; sub(/\..*/, "", op); sub(/;/, "", op); n[op]++ }
        function dump(  o, line) { line = f ":"; for (o in n) if (n[o] >= 8) line = line " " o "=" n[o]; print line }
        END { if (f) dump() }' >"$OUT/sass-summary.txt"
fi
# One process per case, so that a fault in one cannot hide the others.
cases=("odd q8_0" "odd iq2_xxs" "odd q2_K" "odd q4_K" "odd f16" "odd moe-q2"
       attn_q_b attn_q_a attn_kv attn_output_a attn_output_b "shexp gate" "shexp down" "shexp fused" "output head"
       router "compressor kv" "indexer q_b" hc_attn_fn
       "expert gate iq2_xxs" "expert down q2_K" "expert gate q4_K" "expert down q4_K"
       "big iq2_xxs" "big q2_K" "big q4_K" "moe q2" "moe q4")
[ $# -gt 0 ] && cases=("$@")
rc=0
: >"$OUT/bench.txt"
for c in "${cases[@]}"; do
    "$B/ds4-cuda-bench" --only "$c" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} >"$B/case.txt" 2>&1 || { rc=1; echo "case '$c' failed:"; tail -5 "$B/case.txt"; }
    cat "$B/case.txt" >>"$OUT/bench.txt"
done
grep -m1 "^device:" "$OUT/bench.txt"
grep -E "^(odd|attn|shexp|output|router|compressor|indexer|hc_|expert|big|moe|  )" "$OUT/bench.txt" | grep -v "^host-check"
echo "| case | shape | MB/call | us/call | GB/s | % of copy | best waves: GB/s (%) | max rel err | check |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
grep -E "^\| [a-z]" "$OUT/bench.txt" | grep -v "^| case"
# The previous kernels (an ignored copy in .cuda-prev/, if carried) on the
# same card, for a same-machine comparison.
if [ -d .cuda-prev/src/backend/cuda ]; then
    P=.cuda-prev/src/backend/cuda
    "$NVCC" -O3 -std=c++17 $ARCH -c $P/cuda_kernels.cu -o "$B/prev_kernels.o" &
    "$NVCC" -O3 -std=c++17 $ARCH -c $P/cuda_bench.cu -o "$B/prev_bench.o" &
    wait
    objs=$(ls "$B"/*.o | grep -v -e cuda_kernels.o -e cuda_bench.o -e prev_)
    if "$NVCC" $ARCH "$B/prev_bench.o" "$B/prev_kernels.o" $objs -lm -o "$B/prev-bench"; then
        for c in attn_q_b attn_q_a "compressor kv" "big iq2_xxs" "big q2_K" "big q4_K" "moe q2"; do
            "$B/prev-bench" --only "$c" 2>&1 | grep -E "^\| [a-z]" | grep -v "^| case" | sed 's/^/previous /'
        done | tee "$OUT/previous.txt"
    fi
fi
if command -v ncu >/dev/null && [ $# -eq 0 ]; then
    for c in "attn_q_a" "big iq2_xxs" "big q2_K" "moe q2"; do
        timeout 60 ncu --clock-control none --section SpeedOfLight --section Occupancy \
            --section MemoryWorkloadAnalysis -k regex:'k_matvec|k_moe' --launch-count 2 \
            "$B/ds4-cuda-bench" --only "$c" --reps 1 >"$OUT/ncu-${c// /_}.txt" 2>&1
        grep -E "^  [a-z_ ]*k_|DRAM Throughput|Duration|SM Active Cycles|Elapsed Cycles|Compute \(SM\)|L1/TEX Cache|Achieved Occupancy" \
            "$OUT/ncu-${c// /_}.txt" | head -24
    done
fi
exit $rc
