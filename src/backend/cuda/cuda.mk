# cuda.mk — builds the CUDA kernel library and ds4-cuda-bench; run by the
# main Makefile's `cuda` target, which passes NVCC, CUDA_BUILD, CUDA_ARCHS,
# CC and CFLAGS. Kept apart so the plain build never needs nvcc.
#
#   $(CUDA_BUILD)/libds4cuda.a        every src/backend/cuda/*.cu but the bench
#   $(CUDA_BUILD)/bin/ds4-cuda-bench  cuda_bench.cu + the library + src/quant
#                                     (the CPU reference it checks against)

CUDA_DIR := src/backend/cuda
CUDA_BENCH_SRC := $(CUDA_DIR)/cuda_bench.cu
CUDA_LIB_SRC := $(filter-out $(CUDA_BENCH_SRC),$(wildcard $(CUDA_DIR)/*.cu))
CUDA_LIB_OBJ := $(CUDA_LIB_SRC:%.cu=$(CUDA_BUILD)/obj/%.o)
CUDA_BENCH_OBJ := $(CUDA_BENCH_SRC:%.cu=$(CUDA_BUILD)/obj/%.o)
CUDA_HOST_OBJ := $(patsubst %.c,$(CUDA_BUILD)/obj/%.o,$(wildcard src/quant/*.c) src/common/error.c)
NVCCFLAGS ?= -O3 -std=c++17 -lineinfo -Xcompiler -Wall,-Wno-unknown-pragmas

.PHONY: all
all: $(CUDA_BUILD)/libds4cuda.a $(CUDA_BUILD)/bin/ds4-cuda-bench

$(CUDA_BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_ARCHS) -MMD -MP -c $< -o $@

$(CUDA_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(CUDA_BUILD)/libds4cuda.a: $(CUDA_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CUDA_BUILD)/bin/ds4-cuda-bench: $(CUDA_BENCH_OBJ) $(CUDA_BUILD)/libds4cuda.a $(CUDA_HOST_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $^ -lm -o $@

-include $(CUDA_LIB_OBJ:.o=.d) $(CUDA_BENCH_OBJ:.o=.d) $(CUDA_HOST_OBJ:.o=.d)
