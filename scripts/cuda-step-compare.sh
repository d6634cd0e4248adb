#!/usr/bin/env bash
# cuda-step-compare.sh — on a GPU machine: the decode step of two builds in
# one run on one card, so their speeds compare. NEW is checked
# (test_cuda_forward) and timed, BASE only timed, each through
# cuda-forward-check.sh (per-operation profile at PROFILE_LAYERS, ds4-bench
# at LAYERS and CTX), then ds4-bench at 4096 tokens of context (CTX4K_LAYERS
# layers; every ratio-4 layer's indexer is active there). Logs in
# $OUT/{new,base}; a table of decode speeds last.
#
#   NEW=.cudaperf-carry/new BASE=.cudaperf-carry/base bash scripts/cuda-step-compare.sh
#
# Each directory holds bin/ds4-bench and tests/test_cuda_forward built on
# the dev machine (`make cuda CUDA_BUILD=...`, see cuda-forward-check.sh);
# shared libraries the GPU machine lacks go in $LIB_DIR (default the
# directory above NEW, lib/).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda-compare}"
NEW="${NEW:?NEW=build dir}"
BASE="${BASE:?BASE=build dir}"
LIB_DIR="${LIB_DIR:-$(dirname "$NEW")/lib}"
[ -d "$LIB_DIR" ] && export LD_LIBRARY_PATH="$PWD/$LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rc=0
OUT="$OUT/new" BIN_DIR="$NEW" bash scripts/cuda-forward-check.sh || rc=1
OUT="$OUT/base" BIN_DIR="$BASE" TEST=0 bash scripts/cuda-forward-check.sh || rc=1
for v in new base; do
    dir=$NEW; [ $v = base ] && dir=$BASE
    for L in ${CTX4K_LAYERS:-4}; do
        echo "== $v: ds4-bench --synthetic q2 --layers $L at ctx 4096"
        timeout 240 "$dir/bin/ds4-bench" --synthetic q2 --layers "$L" --cuda --ctx-start 4096 --ctx-max 4096 \
            -n "${GEN:-64}" --bw-mib 0 --csv "$OUT/$v/bench4k-L$L.csv" 2>&1 | tee "$OUT/$v/bench4k-L$L.txt" | tail -4 || rc=1
    done
done
echo "== decode tok/s (csv: ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes)"
for f in "$OUT"/*/bench*.csv; do echo "$f: $(tail -1 "$f")"; done
for v in new base; do echo "== $v profile"; sed -n '/cuda profile/,/total/p' "$OUT/$v/profile.txt"; done
exit $rc
