PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= gateway.toml

.PHONY: install dev run test lint check clean bench scale

# The gateway alone for `make run`; the test and tracing extras only when a target needs them.
$(BIN)/gateway: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(BIN)/gateway

$(VENV)/.dev: $(BIN)/gateway
	$(BIN)/pip install -q -e '.[test,otel]'
	touch $(VENV)/.dev

install: $(BIN)/gateway

dev: $(VENV)/.dev

run: install
	$(BIN)/gateway serve --config $(CONFIG)

check: install
	$(BIN)/gateway check --config $(CONFIG)

test: dev
	$(BIN)/ruff check proxy adapters tests
	$(BIN)/pytest -q

# Direct vs gateway (bare, governed) vs LiteLLM and Portkey on loopback; writes tests/bench/RESULTS.md.
# BENCH_ARGS="--quick --skip-litellm --skip-portkey" (or BENCH_QUICK=1, BENCH_SKIP_LITELLM=1,
# BENCH_SKIP_PORTKEY=1) for a smoke run.
bench: dev
	$(BIN)/python tests/bench/run.py $(BENCH_ARGS)

# The scale-out proof: 3 replicas x 2 workers, a 3-node Redis Cluster, Postgres (127.0.0.1:5432 db test), a
# replica SIGKILLed mid-run; writes its section of tests/bench/RESULTS.md. SCALE_ARGS="--duration 30", "--no-write".
scale: dev
	$(BIN)/python -m tests.bench.scale $(SCALE_ARGS)

lint: dev
	$(BIN)/ruff check proxy adapters tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
