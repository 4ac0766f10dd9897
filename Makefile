# Two commands matter: `make run` and `make test`. Everything else is a step of theirs
# or a longer run (bench, soak) kept out of the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests need: binary:package
APT_TEST := prometheus:prometheus promtool:prometheus nginx:nginx-light wrk:wrk chromium:chromium chromedriver:chromium-driver valgrind:valgrind
APT_BENCH := nginx:nginx-light wrk:wrk

.PHONY: venv install run test lint typecheck pytest bench bench-quick bench-micro bench-reload bench-instructions bench-profile bench-memory bench-locust soak apt-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

venv install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gateway.demo

apt-test:
	scripts/ensure-apt.sh $(APT_TEST)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) apt-test
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	scripts/ensure-apt.sh $(APT_BENCH)
	$(BIN)/python -m bench.harness --rounds 3 --duration 5

bench-quick: $(STAMP)
	scripts/ensure-apt.sh $(APT_BENCH)
	$(BIN)/python -m bench.harness --quick

bench-micro: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_decision_bench.py tests/test_hosts_bench.py \
		--benchmark-enable --benchmark-columns=median,iqr,ops --benchmark-sort=name

bench-reload: $(STAMP)
	$(BIN)/python -m bench.reload_bench

# Instructions per request (valgrind): steady where timings are not; see bench/RESULTS.md.
bench-instructions: $(STAMP)
	scripts/ensure-apt.sh valgrind:valgrind
	$(BIN)/python -m bench.instructions

bench-profile: $(STAMP)
	$(BIN)/python -m bench.profile_engine --engines aiohttp,fast --duration 10

bench-memory: $(STAMP)
	$(BIN)/python -m bench.memory --short

bench-locust: $(STAMP)
	$(BIN)/python -m bench.locust_run

# Long runs kept out of `make test`: a million distinct Host values against bounded memory
# and series, and a 10-minute peak-load run whose RSS must stay flat.
soak: $(STAMP)
	scripts/ensure-apt.sh $(APT_BENCH)
	GATEWAY_FLOOD_N=1000000 GATEWAY_ENGINES=fast $(BIN)/python -m pytest -q -s -p no:cacheprovider \
		tests/test_rollout.py -k flood --timeout 3600
	$(BIN)/python -m bench.memory --duration 600

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
