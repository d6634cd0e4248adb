#!/usr/bin/env bash
# test_cuda_build.sh — the CUDA kernels build and their arithmetic is right
# on the CPU side.
#
# Where nvcc exists (CI's build machines have it, without a GPU): the full
# `make cuda` (sm_90, sm_80, sm_89, sm_120: about 4 minutes on the shared 2-core
# build machine with nvcc's --threads; later runs are incremental) into its own
# build dir, then `ds4-cuda-bench --host-check`, which runs the kernels' per-block
# arithmetic (src/backend/cuda/cuda_formats.cuh) on the CPU and requires
# every row to equal ds4_dot bit for bit. The GPU runs are
# scripts/cuda-bench.sh on a GPU machine. Skipped without nvcc, and under
# sanitizers (nothing new to find there, and it would double the build).
set -u
NVCC="${NVCC:-/usr/local/cuda/bin/nvcc}"
[ -x "$NVCC" ] || { echo "no nvcc at $NVCC"; exit 77; }
[ "${DS4_SAN:-0}" = 1 ] && { echo "not run under sanitizers"; exit 77; }
cd "$DS4_ROOT" || exit 1
out="$DS4_BUILD/cuda-check"
make --no-print-directory cuda NVCC="$NVCC" CUDA_BUILD="$out" || { echo "FAIL: make cuda"; exit 1; }
[ -f "$out/libds4cuda.a" ] || { echo "FAIL: no $out/libds4cuda.a"; exit 1; }
"$out/bin/ds4-cuda-bench" --host-check || { echo "FAIL: host check"; exit 1; }
# The measuring option (cuda_timeline.cuh) keeps building: sm_90 only.
make --no-print-directory cuda NVCC="$NVCC" CUDA_BUILD="$out-timeline" CUDA_TIMELINE=1 \
    CUDA_ARCHS="-gencode arch=compute_90,code=sm_90" >/dev/null || { echo "FAIL: make cuda CUDA_TIMELINE=1"; exit 1; }
# Bad usage is a clear error, not a crash.
"$out/bin/ds4-cuda-bench" --reps 2>/dev/null
[ $? -eq 2 ] || { echo "FAIL: bad usage should exit 2"; exit 1; }
echo "ok"
