#!/usr/bin/env bash
# cuda-issue7-bench.sh — on a GPU machine: the measurements issue 7's "done
# when" names, in one run. Logs and CSVs in $OUT (default /tmp/cuda-issue7).
#   1. test_cuda_forward and test_cuda_attention (what `make test-cuda` runs)
#   2. q2, all layers that fit (43 on an H200): an 8192-token random prompt
#      prefilled from scratch, then frontiers 16k, 32k, 64k (decode at each),
#      and decode at 4096 in a second run
#   3. q2 at 4 layers (same sweeps) for the per-layer time
#   4. q4 at the most layers that fit and at 4 layers: per-layer decode time
# Binaries: $BIN_DIR (bin/ds4-bench, tests/test_cuda_{forward,attention}, lib/ with the
# shared libraries the GPU machine lacks), built on the dev machine:
#   make cuda CUDA_BUILD=$BIN_DIR CUDA_ARCHS="-gencode arch=compute_90,code=sm_90"
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda-issue7}"
BIN_DIR="${BIN_DIR:-build-cuda}"
GEN="${GEN:-32}"
mkdir -p "$OUT"
[ -d "$BIN_DIR/lib" ] && export LD_LIBRARY_PATH="$PWD/$BIN_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,memory.free,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "commit ${DS4_COMMIT:-?}"
rc=0
if [ "${TEST:-1}" != 0 ]; then
    { timeout 200 "$BIN_DIR/tests/test_cuda_forward" && timeout 120 "$BIN_DIR/tests/test_cuda_attention"; } \
        >"$OUT/test-cuda.txt" 2>&1 || rc=1
    grep -E "FAIL|checks|passed|failed" "$OUT/test-cuda.txt" | tail -8
fi
# bench NAME TYPE LAYERS ARGS...: one ds4-bench run, CSV and stderr kept.
bench() {
    local name=$1 type=$2 layers=$3
    shift 3
    local t0=$EPOCHREALTIME
    timeout "${BENCH_TIMEOUT:-240}" "$BIN_DIR/bin/ds4-bench" --synthetic "$type" --layers "$layers" --cuda --bw-mib 0 \
        -n "$GEN" --csv "$OUT/$name.csv" "$@" >"$OUT/$name.txt" 2>&1
    local r=$?
    echo "== $name: $type, $layers layers, $* (rc $r, $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s)"
    grep -E "model:|ctx +[0-9]+|prefill|needs|error" "$OUT/$name.txt" | cut -c1-240
    cat "$OUT/$name.csv" 2>/dev/null
    return $r
}
L2="${Q2_LAYERS:-43}"
bench q2-L$L2-long q2 "$L2" --ctx-start 8192 --ctx-max 65536 --step-mul 2 || rc=1
bench q2-L$L2-4k q2 "$L2" --ctx-start 4096 --ctx-max 4096 || rc=1
bench q2-L4-long q2 4 --ctx-start 8192 --ctx-max 65536 --step-mul 2 || rc=1
bench q2-L4-4k q2 4 --ctx-start 4096 --ctx-max 4096 || rc=1
# q4: the most layers that fit (the fit check refuses before loading).
for L4 in ${Q4_LAYERS:-39 38 37 36 35 34 33 32}; do
    if bench q4-L$L4-4k q4 "$L4" --ctx-start 4096 --ctx-max 4096; then break; fi
done
bench q4-L4-4k q4 4 --ctx-start 4096 --ctx-max 4096 || rc=1
exit $rc
