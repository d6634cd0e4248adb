#!/usr/bin/env bash
# cuda-forward-check.sh — on a GPU machine: the CUDA decode step against the
# CPU backend (test_cuda_forward, tiny model), then decode speed on
# synthetic full-size q2 models of a few layer counts (ds4-bench), logs in
# $OUT (default /tmp/cuda-forward).
#
#   scripts/cuda-forward-check.sh            LAYERS="4 28" CTX=512 GEN=64 PROFILE_LAYERS=4
#   (TEST=0: speed only, no test_cuda_forward; e.g. for a baseline build;
#   PROFILE_CTX: context of the profile run, default 128)
#
# Binaries: $BIN_DIR (default build-cuda) from `make cuda`, built here
# unless they exist already. The lent GPU machines have nvcc but not
# jansson/utf8proc/...: build on the dev machine and carry them, e.g.
#   make cuda CUDA_BUILD=.cudafwd-bin CUDA_ARCHS="-gencode arch=compute_90,code=sm_90"
#   mkdir -p .cudafwd-bin/lib && cp -L /lib/x86_64-linux-gnu/lib{jansson.so.4,utf8proc.so.2} .cudafwd-bin/lib/
#   (.cudafwd-bin in .git/info/exclude; run with carry [".cudafwd-bin"], BIN_DIR=.cudafwd-bin;
#   carry only bin/ds4-bench, tests/test_cuda_forward and lib/ to stay under the size limit)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda-forward}"
BIN_DIR="${BIN_DIR:-build-cuda}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "commit ${DS4_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"
if [ ! -x "$BIN_DIR/tests/test_cuda_forward" ]; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    make -j"$(nproc)" cuda CUDA_BUILD="$BIN_DIR" CUDA_ARCHS="-gencode arch=compute_${cap},code=sm_${cap}" \
        >"$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
fi
[ -d "$BIN_DIR/lib" ] && export LD_LIBRARY_PATH="$PWD/$BIN_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rc=0
if [ "${TEST:-1}" != 0 ]; then
    timeout 240 "$BIN_DIR/tests/test_cuda_forward" 2>&1 | tee "$OUT/test-cuda.txt" || rc=1
fi
if [ -n "${PROFILE_LAYERS:-}" ]; then
    echo "== DS4_CUDA_PROFILE=1 ds4-bench --synthetic q2 --layers $PROFILE_LAYERS at ctx ${PROFILE_CTX:-128} (uncaptured, per operation)"
    DS4_CUDA_PROFILE=1 timeout 200 "$BIN_DIR/bin/ds4-bench" --synthetic q2 --layers "$PROFILE_LAYERS" --cuda \
        --ctx-start "${PROFILE_CTX:-128}" --ctx-max "${PROFILE_CTX:-128}" -n 16 --bw-mib 0 --csv "$OUT/profile.csv" 2>&1 | tee "$OUT/profile.txt" || rc=1
fi
for L in ${LAYERS:-4 28}; do
    echo "== ds4-bench --synthetic q2 --layers $L"
    timeout 300 "$BIN_DIR/bin/ds4-bench" --synthetic q2 --layers "$L" --cuda --ctx-start "${CTX:-512}" \
        --ctx-max "${CTX:-512}" -n "${GEN:-64}" --bw-mib 0 --csv "$OUT/bench-L$L.csv" 2>&1 | tee "$OUT/bench-L$L.txt" || rc=1
done
exit $rc
