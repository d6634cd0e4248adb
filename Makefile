# ds4 — build, test and run. Plain GNU make, no CMake.
#
#   make            build everything (binaries in build/bin, copied to ./)
#   make run        build, then start the main job (server on the real model if
#                   ./ds4flash.gguf exists, else a tiny demo model)
#   make test       build, then run every test (installs what tests need)
#   make test SAN=1 the same under ASan + UBSan (build-san/)
#   make fuzz       libFuzzer targets (clang) in build-fuzz/
#   make cuda       the CUDA backend (nvcc): CUDA-enabled ds4, ds4-server, ds4-bench
#                   in build-cuda/bin
#   make test-cuda  on a GPU machine: CUDA vs CPU logits (tests/cuda/last-run.txt)
#
# Layout rules (so adding a file never needs a Makefile edit):
#   src/*/*.c, src/backend/*/*.c   -> libds4.a, except files named main.c
#   src/cli/main.c                 -> ds4
#   src/server/main.c              -> ds4-server
#   tools/ds4-NAME.c               -> ds4-NAME
#   tests/test_NAME.c              -> build/tests/test_NAME (run by scripts/run-tests.sh)
#   tests/fuzz/fuzz_NAME.c         -> build-fuzz/fuzz_NAME

CC ?= cc
SAN ?= 0
ifeq ($(SAN),1)
BUILD ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
OPT = -O1
else
BUILD ?= build
SANFLAGS =
OPT = -O2
endif

CFLAGS ?= $(OPT) -g
CFLAGS += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
          -pthread -MMD -MP $(SANFLAGS)
LDFLAGS += -pthread $(SANFLAGS)
LDLIBS = -ljansson -lmicrohttpd -lutf8proc -ledit -lcrypto -lm

LIB_SRC := $(filter-out %/main.c,$(wildcard src/*/*.c src/backend/*/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIBA := $(BUILD)/libds4.a

MAIN_PROGS := $(if $(wildcard src/cli/main.c),ds4) $(if $(wildcard src/server/main.c),ds4-server)
TOOL_PROGS := $(patsubst tools/%.c,%,$(wildcard tools/ds4-*.c))
PROGS := $(MAIN_PROGS) $(TOOL_PROGS)
BINS := $(PROGS:%=$(BUILD)/bin/%)

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all deps test-deps test run cuda test-cuda fuzz clean
all: deps $(BINS)
ifeq ($(SAN),0)
	@for p in $(PROGS); do cp -f $(BUILD)/bin/$$p ./$$p; done
endif

deps:
	@scripts/deps.sh

test-deps:
	@scripts/deps.sh --test

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBA): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/bin/ds4: $(BUILD)/obj/src/cli/main.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/ds4-server: $(BUILD)/obj/src/server/main.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/ds4-%: $(BUILD)/obj/tools/ds4-%.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -ldl -o $@

test: all test-deps $(TEST_BINS)
	@DS4_BUILD=$(BUILD) DS4_SAN=$(SAN) scripts/run-tests.sh

run: all
	@scripts/run-main.sh

# CUDA: the kernel library and ds4-cuda-bench (rules in src/backend/cuda/cuda.mk).
# Hopper first; sm_80/sm_89/sm_120 machine code too, and compute_120 PTX for newer GPUs.
NVCC ?= /usr/local/cuda/bin/nvcc
CUDA_BUILD ?= build-cuda
CUDA_ARCHS ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
              -gencode arch=compute_89,code=sm_89 -gencode arch=compute_120,code=[sm_120,compute_120]
cuda:
	@$(MAKE) --no-print-directory -f src/backend/cuda/cuda.mk NVCC="$(NVCC)" CUDA_BUILD="$(CUDA_BUILD)" \
	  CUDA_ARCHS="$(CUDA_ARCHS)" CC="$(CC)" CFLAGS="$(CFLAGS)"

# On a GPU machine: the CUDA backend against the CPU backend (tiny models, logits
# and state), the speculative verify step against one-token steps, the MTP block
# against the CPU's, then the prefill attention kernel against a CPU reference at the
# full model's shape, the prefill's f16 products, and the decode MoE kernels at
# the model's shapes against the CPU's products (ds4-cuda-bench's checks); the
# output is kept in tests/cuda/last-run.txt.
test-cuda: cuda
	@mkdir -p tests/cuda
	@{ $(CUDA_BUILD)/tests/test_cuda_forward && $(CUDA_BUILD)/tests/test_cuda_verify && \
	   $(CUDA_BUILD)/tests/test_cuda_mtp && \
	   $(CUDA_BUILD)/tests/test_cuda_attention && \
	   $(CUDA_BUILD)/tests/test_cuda_gemm16 && $(CUDA_BUILD)/bin/ds4-cuda-bench --only moe --reps 3; } \
	  >tests/cuda/last-run.txt 2>&1; rc=$$?; cat tests/cuda/last-run.txt; exit $$rc

FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
fuzz: deps
	@$(MAKE) --no-print-directory CC=clang BUILD=build-fuzz \
	  SANFLAGS="-fsanitize=fuzzer-no-link,address,undefined" $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/fuzz/%)

build-fuzz/fuzz/%: tests/fuzz/%.c build-fuzz/libds4.a
	@mkdir -p $(dir $@)
	clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined $^ $(LDLIBS) -pthread -o $@

clean:
	rm -rf build build-san build-fuzz $(PROGS)

PROG_DEPS := $(BUILD)/obj/src/cli/main.d $(BUILD)/obj/src/server/main.d $(TOOL_PROGS:%=$(BUILD)/obj/tools/%.d)
-include $(LIB_OBJ:.o=.d) $(TEST_SRC:tests/%.c=$(BUILD)/obj/tests/%.d) $(PROG_DEPS)
