# A thin wrapper over CMake (the one source of truth). Each target installs
# missing Debian packages first (scripts/deps.sh), then builds.
BUILD   ?= build
ASAN    ?= build-asan
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
ARGS    ?=
WERROR  := $(if $(CI),ON,OFF)
CMAKE   := cmake -DECHOKIT_WERROR=$(WERROR)

.PHONY: all deps test-deps build run test test-fast test-valgrind install clean fuzz

all: build

deps:
	@scripts/deps.sh build

build: deps
	@$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# echo on 127.0.0.1:7000; pass options with ARGS="-H lines -l 127.0.0.1:7001"
run: build
	./$(BUILD)/echokit $(ARGS)

# The whole suite twice: the release build, then built with ASan+UBSan.
test: test-deps
	@$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j2 --timeout 120
	@$(CMAKE) -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DECHOKIT_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN) -j$(JOBS)
	cd $(ASAN) && ctest --output-on-failure -j2 --timeout 300

# The release build only: the quick loop while developing.
test-fast: test-deps
	@$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j2 --timeout 120

# The functional suite with every server under valgrind's memcheck.
test-valgrind: test-deps build
	cd $(BUILD) && ECHOKIT_LUA_POOL=0 \
		ECHOKIT_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full" ctest --output-on-failure --timeout 1500 -R functional

test-deps:
	@scripts/deps.sh test

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZBUILD)

# Coverage-guided fuzzing (clang + libFuzzer, installed by scripts/deps.sh fuzz):
# each harness runs FUZZ_SECONDS, reading the committed seeds in fuzz/corpus/
# and keeping what it finds new in $(FUZZBUILD)/corpus/ (never in the source
# tree); a crash or broken invariant stops with the input in
# $(FUZZBUILD)/findings/. e.g. make fuzz FUZZ_SECONDS=600 FUZZ_TARGETS=lua_http
FUZZBUILD    ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= net util codec pcap tlshello capread lua_http lua_websocket lua_resp lua_framing lua_glob lua_handlers
fuzz:
	@scripts/deps.sh fuzz
	@cmake -S . -B $(FUZZBUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DECHOKIT_FUZZ=ON -DECHOKIT_WERROR=$(WERROR) >/dev/null
	@cmake --build $(FUZZBUILD) -j$(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	@mkdir -p $(FUZZBUILD)/findings
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZBUILD)/corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		$(FUZZBUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
			-artifact_prefix=$(FUZZBUILD)/findings/$$t- -print_final_stats=1 \
			$$(test -f fuzz/dict/$$t.dict && echo -dict=fuzz/dict/$$t.dict) \
			$(FUZZBUILD)/corpus/$$t fuzz/corpus/$$t 2>$(FUZZBUILD)/$$t.log \
			|| { tail -n 40 $(FUZZBUILD)/$$t.log; exit 1; }; \
		grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' \
			$(FUZZBUILD)/$$t.log; \
	done

# Benchmarks against bare C, Python, HAProxy, socat and nginx (~10 min);
# writes docs/bench.md and docs/bench.png. e.g. make bench BENCH_ARGS=--quick
.PHONY: bench
bench:
	bench/run $(BENCH_ARGS)
