# sd3c — top-level build. `make` builds build/libsd3.a and build/sd3; `make test` builds and runs every
# test; `make golden [GOLDEN=dir] [ONLY=kind,kind]` runs the golden runner; `make bench`; `make asan`.
# Sources are found by wildcard: a new src/**/*.c joins the library, a new tests/test_*.c is a test.

BUILD   ?= build
CC      ?= cc
GOLDEN  ?= ../shared/golden
ONLY    ?=
ARCH    := $(shell uname -m)

OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
# -std=c11 (ISO mode) also means -ffp-contract=off: no silent FMA contraction (the torch RNG and the
# scheduler are reproduced bit for bit, which needs exactly the roundings written in the code).
BASEFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -ffp-contract=off -fno-math-errno \
             -Iinclude -Isrc -pthread $(shell pkg-config --cflags libcjson 2>/dev/null) $(EXTRA_CFLAGS)
LDLIBS  := -lcjson -lstb -lpng16 -lm -pthread $(EXTRA_LDLIBS)

ifeq ($(ARCH),x86_64)
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx512vnni
endif

# ---- optional parts: detected, reported, used when present ----
HAVE_OPENMP   := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo yes || echo no)
HAVE_OPENBLAS := $(shell pkg-config --exists openblas 2>/dev/null && echo yes || echo no)
HAVE_CUDA     := $(shell command -v nvcc >/dev/null 2>&1 && echo yes || echo no)

LIB_SRC   := $(shell find src -name '*.c' | sort)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC  := $(sort $(wildcard tests/test_*.c))
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
GOLD_SRC  := $(sort $(wildcard tests/golden/*.c))
GOLD_OBJ  := $(GOLD_SRC:%.c=$(BUILD)/obj/%.o)
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all test golden bench asan clean info setup fuzz leakcheck
.SECONDARY:
all: info $(BUILD)/sd3 $(BUILD)/golden $(TEST_BIN) $(BENCH_BIN)

info:
	@echo "sd3c build: cc=$(CC) arch=$(ARCH) build=$(BUILD) | OpenMP: $(HAVE_OPENMP) | OpenBLAS: $(HAVE_OPENBLAS) (not used yet) | CUDA: $(HAVE_CUDA) (not used yet)"

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(CFLAGS) $(if $(findstring _avx512,$<),$(AVX512_FLAGS),$(if $(findstring _avx2,$<),$(AVX2_FLAGS))) -MMD -MP -c $< -o $@

$(BUILD)/libsd3.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

TOOL_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(sort $(wildcard tools/*.c)))
$(BUILD)/sd3: $(TOOL_OBJ) $(BUILD)/libsd3.a
	$(CC) $(CFLAGS) $(LDFLAGS_EXTRA) -o $@ $^ $(LDLIBS)

$(BUILD)/golden: $(GOLD_OBJ) $(BUILD)/libsd3.a
	$(CC) $(CFLAGS) $(LDFLAGS_EXTRA) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(BUILD)/libsd3.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS_EXTRA) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BUILD)/libsd3.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS_EXTRA) -o $@ $^ $(LDLIBS)

# Every unit test, then the golden runner on the kinds implemented so far; one total line at the end.
test: all
	@scripts/run_tests.sh $(BUILD) $(GOLDEN)

golden: $(BUILD)/golden
	$(BUILD)/golden $(GOLDEN) $(if $(ONLY),--only $(ONLY))

bench: all
	@for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done
	$(BUILD)/sd3 bench --standard

# AddressSanitizer + UBSan (+ float-cast-overflow, which gcc's `undefined` leaves out) build of everything,
# then the tests. LeakSanitizer runs at every exit, the CLI's included.
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=undefined,float-cast-overflow" \
	        LDFLAGS_EXTRA="-fsanitize=address,undefined,float-cast-overflow" test

# libFuzzer targets (clang, ASan+UBSan) over every parser; each runs FUZZ_SECONDS on its corpus.
# Needs clang and libclang-rt-14-dev (apt-get install clang libclang-rt-14-dev python3).
FUZZ_SECONDS ?= 60
fuzz:
	$(MAKE) -f fuzz/Makefile BUILD=$(BUILD) GOLDEN=$(GOLDEN) FUZZ_SECONDS=$(FUZZ_SECONDS) $(if $(FUZZ_TARGETS),FUZZ_TARGETS="$(FUZZ_TARGETS)") run

# valgrind --leak-check=full over the CLI's main and error paths.
leakcheck: $(BUILD)/sd3
	scripts/leakcheck.sh $(BUILD) $(GOLDEN)

setup:
	scripts/setup.sh

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
