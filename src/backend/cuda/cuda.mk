# cuda.mk — the CUDA build; run by the main Makefile's `cuda` and
# `test-cuda` targets, which pass NVCC, CUDA_BUILD, CUDA_ARCHS, CC and
# CFLAGS. Kept apart so the plain build never needs nvcc.
#
#   $(CUDA_BUILD)/libds4cuda.a        every src/backend/cuda/*.cu but the bench
#   $(CUDA_BUILD)/libds4.a            the C library compiled with -DDS4_CUDA
#                                     (the engine then offers the cuda backend)
#   $(CUDA_BUILD)/bin/ds4, ds4-server, ds4-bench   CUDA-enabled programs
#   $(CUDA_BUILD)/bin/ds4-cuda-bench  cuda_bench.cu + the library + src/quant
#                                     (the CPU reference it checks against)
#   $(CUDA_BUILD)/tests/test_cuda_forward   CUDA vs CPU logits (test-cuda)
#   $(CUDA_BUILD)/tests/test_cuda_verify    the verify step vs one-token steps
#   $(CUDA_BUILD)/tests/test_cuda_mtp       the MTP block vs the CPU's, in speculation
#   $(CUDA_BUILD)/tests/test_cuda_attention the prefill attention kernel at the
#                                     full model's shape vs a CPU reference
#   $(CUDA_BUILD)/tests/test_cuda_gemm16    the prefill's f16 Q8_0 products vs
#                                     the CPU's integer ones

CUDA_DIR := src/backend/cuda
CUDA_BENCH_SRC := $(CUDA_DIR)/cuda_bench.cu
CUDA_LIB_SRC := $(filter-out $(CUDA_BENCH_SRC),$(wildcard $(CUDA_DIR)/*.cu))
CUDA_LIB_OBJ := $(CUDA_LIB_SRC:%.cu=$(CUDA_BUILD)/obj/%.o)
CUDA_BENCH_OBJ := $(CUDA_BENCH_SRC:%.cu=$(CUDA_BUILD)/obj/%.o)
CUDA_HOST_OBJ := $(patsubst %.c,$(CUDA_BUILD)/bench-obj/%.o,$(wildcard src/quant/*.c) src/common/error.c \
                   src/engine/numerics.c)
# --threads 0: nvcc compiles a file's architectures in parallel, one thread a
# core (cuda_kernels.cu for the four: 170 -> 87 s on the 2-core build machine)
NVCCFLAGS ?= -O3 -std=c++17 -lineinfo -Xcompiler -Wall,-Wno-unknown-pragmas --threads 0
# CUDA_TIMELINE=1: stamp every decode-step kernel (cuda_timeline.cuh), for measuring only
ifeq ($(CUDA_TIMELINE),1)
NVCCFLAGS += -DDS4_CUDA_TIMELINE
endif

C_LIB_SRC := $(filter-out %/main.c,$(wildcard src/*/*.c src/backend/*/*.c))
C_LIB_OBJ := $(C_LIB_SRC:%.c=$(CUDA_BUILD)/obj/%.o)
PROG_OBJ := $(CUDA_BUILD)/obj/src/cli/main.o $(CUDA_BUILD)/obj/src/server/main.o \
            $(CUDA_BUILD)/obj/tools/ds4-bench.o $(CUDA_BUILD)/obj/tests/test_cuda_forward.o \
            $(CUDA_BUILD)/obj/tests/test_cuda_verify.o $(CUDA_BUILD)/obj/tests/test_cuda_mtp.o
LINK_LIBS := -Xlinker --start-group $(CUDA_BUILD)/libds4.a $(CUDA_BUILD)/libds4cuda.a -Xlinker --end-group \
             -lcublas -ljansson -lmicrohttpd -lutf8proc -ledit -lcrypto -lm -lpthread -ldl

.PHONY: all
all: $(CUDA_BUILD)/libds4cuda.a $(CUDA_BUILD)/bin/ds4-cuda-bench $(CUDA_BUILD)/bin/ds4 \
     $(CUDA_BUILD)/bin/ds4-server $(CUDA_BUILD)/bin/ds4-bench $(CUDA_BUILD)/tests/test_cuda_forward \
     $(CUDA_BUILD)/tests/test_cuda_verify $(CUDA_BUILD)/tests/test_cuda_mtp $(CUDA_BUILD)/tests/test_cuda_attention \
     $(CUDA_BUILD)/tests/test_cuda_gemm16

# The decode step restates the CPU's float operations: no contracted multiply-adds.
$(CUDA_BUILD)/obj/$(CUDA_DIR)/cuda_engine.o $(CUDA_BUILD)/obj/$(CUDA_DIR)/cuda_prefill.o: NVCCFLAGS += -fmad=false

$(CUDA_BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_ARCHS) -MMD -MP -c $< -o $@

$(CUDA_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DDS4_CUDA -c $< -o $@

$(CUDA_BUILD)/bench-obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(CUDA_BUILD)/libds4cuda.a: $(CUDA_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CUDA_BUILD)/libds4.a: $(C_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CUDA_BUILD)/bin/ds4-cuda-bench: $(CUDA_BENCH_OBJ) $(CUDA_BUILD)/libds4cuda.a $(CUDA_HOST_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $^ -lm -o $@

$(CUDA_BUILD)/bin/ds4: $(CUDA_BUILD)/obj/src/cli/main.o $(CUDA_BUILD)/libds4.a $(CUDA_BUILD)/libds4cuda.a
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $< $(LINK_LIBS) -o $@

$(CUDA_BUILD)/bin/ds4-server: $(CUDA_BUILD)/obj/src/server/main.o $(CUDA_BUILD)/libds4.a $(CUDA_BUILD)/libds4cuda.a
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $< $(LINK_LIBS) -o $@

$(CUDA_BUILD)/bin/ds4-bench: $(CUDA_BUILD)/obj/tools/ds4-bench.o $(CUDA_BUILD)/libds4.a $(CUDA_BUILD)/libds4cuda.a
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $< $(LINK_LIBS) -o $@

$(CUDA_BUILD)/tests/test_cuda_forward $(CUDA_BUILD)/tests/test_cuda_verify $(CUDA_BUILD)/tests/test_cuda_mtp: \
    $(CUDA_BUILD)/tests/%: \
    $(CUDA_BUILD)/obj/tests/%.o $(CUDA_BUILD)/libds4.a $(CUDA_BUILD)/libds4cuda.a
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $< $(LINK_LIBS) -o $@

$(CUDA_BUILD)/tests/test_cuda_gemm16: $(CUDA_BUILD)/obj/tests/test_cuda_gemm16.o $(CUDA_BUILD)/libds4cuda.a \
                                      $(CUDA_HOST_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCHS) $^ -lcublas -lm -o $@

# Includes the prefill's device code, same flags as cuda_prefill.o; the CPU
# quantiser (src/quant) is its oracle for the f16 output.
$(CUDA_BUILD)/tests/test_cuda_attention: tests/test_cuda_attention.cu $(CUDA_HOST_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -fmad=false $(CUDA_ARCHS) -MMD -MP $< $(CUDA_HOST_OBJ) -lm -o $@

-include $(CUDA_BUILD)/tests/test_cuda_attention.d $(CUDA_BUILD)/obj/tests/test_cuda_gemm16.d $(CUDA_LIB_OBJ:.o=.d) $(CUDA_BENCH_OBJ:.o=.d) $(C_LIB_OBJ:.o=.d) $(PROG_OBJ:.o=.d) $(CUDA_HOST_OBJ:.o=.d)
