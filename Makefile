# Two commands matter: `make run` and `make test`. Everything else is a step of theirs
# or a longer run (bench, soak) kept out of the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The fast engine compiled by mypyc (scripts/compile_fast.py); rebuilt when its sources
# change. Without a C compiler it is skipped and the engine runs interpreted.
COMPILED := gateway/fast_c/__init__.py
READY := $(STAMP) $(COMPILED)
# Debian packages the tests need: binary:package
APT_TEST := prometheus:prometheus promtool:prometheus nginx:nginx-light wrk:wrk chromium:chromium chromedriver:chromium-driver valgrind:valgrind python3-config:python3-dev
APT_BENCH := nginx:nginx-light wrk:wrk

.PHONY: venv install compile run test lint typecheck pytest pytest-interpreted bench bench-parser bench-quick bench-micro bench-reload bench-instructions bench-profile bench-memory bench-locust soak apt-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

venv install: $(STAMP)

# (every module of the package: the build is compiled against their types; see
# gateway.fast.source_digest, which decides whether a build is used)
$(COMPILED): $(STAMP) $(shell find gateway -name '*.py' -not -path 'gateway/fast_c/*') scripts/compile_fast.py
	@if [ -n "$$GATEWAY_REQUIRE_COMPILED" ]; then scripts/ensure-apt.sh gcc:gcc; fi
	$(BIN)/python scripts/compile_fast.py

compile: $(COMPILED)

run: $(READY)
	$(BIN)/python -m gateway.demo

apt-test:
	scripts/ensure-apt.sh $(APT_TEST)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench scripts
	$(BIN)/ruff format --check gateway tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(READY) apt-test
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The suite above runs the compiled fast engine; its own tests and the differential test
# run again on the interpreted one (the same sources, as they run without a compiler).
pytest-interpreted: $(READY) apt-test
	GATEWAY_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_fast_engine.py tests/test_differential.py

# CI's command: here a fast engine that cannot be compiled is a failure, not a fallback.
test: export GATEWAY_REQUIRE_COMPILED := 1
test: lint typecheck pytest pytest-interpreted

bench: $(READY)
	scripts/ensure-apt.sh $(APT_BENCH)
	$(BIN)/python -m bench.harness --rounds 5 --duration 5

# What aiohttp's request parser costs: the bare sketch on it and on httptools, beside nginx
# and the fast engine (bench/RESULTS.md, "What the request parser costs").
bench-parser: $(READY)
	scripts/ensure-apt.sh $(APT_BENCH)
	$(BIN)/python -m bench.harness --rounds 5 --duration 5 \
		--systems nginx,bare-protocol,bare-httptools,gateway-fast --out bench/results/parser

bench-quick: $(READY)
	scripts/ensure-apt.sh $(APT_BENCH)
	$(BIN)/python -m bench.harness --quick

bench-micro: $(READY)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_decision_bench.py tests/test_hosts_bench.py \
		--benchmark-enable --benchmark-columns=median,iqr,ops --benchmark-sort=name

bench-reload: $(READY)
	$(BIN)/python -m bench.reload_bench

# Instructions per request (valgrind): steady where timings are not; see bench/RESULTS.md.
bench-instructions: $(READY)
	scripts/ensure-apt.sh valgrind:valgrind
	$(BIN)/python -m bench.instructions

bench-profile: $(READY)
	$(BIN)/python -m bench.profile_engine --engines aiohttp,fast --duration 10

bench-memory: $(READY)
	$(BIN)/python -m bench.memory --short

bench-locust: $(READY)
	$(BIN)/python -m bench.locust_run

# Long runs kept out of `make test`: a million distinct Host values against bounded memory
# and series, and a 10-minute peak-load run whose RSS must stay flat.
soak: $(READY)
	scripts/ensure-apt.sh $(APT_BENCH)
	GATEWAY_FLOOD_N=1000000 GATEWAY_ENGINES=fast $(BIN)/python -m pytest -q -s -p no:cacheprovider \
		tests/test_rollout.py -k flood --timeout 3600
	$(BIN)/python -m bench.memory --duration 600

clean:
	rm -rf $(VENV) gateway/fast_c build .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
