# synth-pipelines. `make demo` and `make test` each set up the venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-complete
DOMAIN ?= api_development
TARGET_COUNT ?= 16
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export CMAKE_BUILD_PARALLEL_LEVEL := 2
export NO_MKDOCS_2_WARNING := 1
# Bytecode caches on, whatever the calling shell says: with PYTHONDONTWRITEBYTECODE set, every
# process (each pytest worker, run, daemon and Celery worker) compiles the package from source and
# pytest re-rewrites the assertions of every test module and plugin: collecting the suite took 17.1 s
# of CPU per process instead of 9.4 s.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-fast dev docs partitions dbt lint format bench bench-llm bench-quality bench-scale bench-celery bench-embed bench-backfill bench-rerun bench-judges bench-text bench-decon clean-warehouse

setup: $(STAMP)

# torch==2.13.0 first: on these machines that pin takes the local CPU wheel instead of GBs of CUDA.
# llama-cpp-python compiles from source (~5 min on 2 cores), for an AVX2 baseline and not for the
# building CPU: a native build on a machine with AMX crashed in llama_decode (SIGSEGV) where the
# sandbox does not grant AMX tiles. --no-cache-dir: a natively built wheel in pip's cache (its key
# ignores CMAKE_ARGS) must not be reused.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir --no-binary llama-cpp-python \
	  'llama-cpp-python[server]>=0.3.16'
	$(BIN)/pip install -e '.[dev]'
	@mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	touch $(STAMP)

demo: setup
	@mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(BIN)/python -m synth_pipelines.runner --domain $(DOMAIN) --target-count $(TARGET_COUNT)

# One worker more than the cores: much of the suite waits on servers, daemons, queued runs and
# subprocesses, so with one worker per core the 2 cores here were 1.69 busy on average (7:11 wall).
# Three workers on 2 cores, measured in one session: 5:32 wall, against 6:59 with two (docs/testing.md).
# One file's tests stay in one worker, so a file's fixtures and shared folders are never raced.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

# The quick loop: everything but the end-to-end runs and the tests of 5 s or more (marked slow).
test-fast: setup
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not e2e and not slow and not llama_server"

dev: setup
	@mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(BIN)/dagster dev -w workspace.yaml

# The documentation site (docs/, mkdocs-material) into site/; --strict: a broken link or anchor fails.
docs: setup
	$(BIN)/mkdocs build --strict

# Register a `domain` partition for every valid spec in schemas/ (the sensor does this too).
partitions: setup
	@mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(BIN)/python -m synth_pipelines.runner --sync-partitions

# Build the dbt_quality project (staging, marts, tests) against the warehouse's DuckDB file.
# The DuckDB file of SYNTH_WAREHOUSE / SYNTH_STATE_DIR (./warehouse by default), unless SYNTH_DUCKDB_PATH says.
DUCKDB_PATH = $(or $(SYNTH_DUCKDB_PATH),$(shell $(BIN)/python -c "from synth_pipelines.warehouse.storage import Warehouse, location_from_env; root, state = location_from_env(); print(Warehouse(root, state_dir=state).duckdb_path)" 2>/dev/null))

dbt: setup
	cd dbt_quality && SYNTH_DUCKDB_PATH=$(DUCKDB_PATH) ../$(BIN)/dbt build --profiles-dir .

lint: setup
	$(BIN)/ruff format --check synth_pipelines tests bench
	$(BIN)/ruff check synth_pipelines tests bench
	$(BIN)/mypy synth_pipelines

format: setup
	$(BIN)/ruff format synth_pipelines tests bench
	$(BIN)/ruff check --fix synth_pipelines tests bench

# Provider-layer throughput against the local fake OpenAI server (2,000 requests, concurrency 64).
bench-llm: setup
	$(BIN)/python -m bench.llm_throughput 2>/dev/null

# Dedup and diversity at 10k and 100k synthetic rows; reports the time ratio between the sizes.
bench-quality: setup
	$(BIN)/python -m bench.quality_scale

# The whole graph through `synth generate` at 1,000 and 10,000 examples against the fake server at
# 500 ms latency, concurrency 64 (SCALE_N=100000 adds a 100k run). Ends with scale_*/ideal_ratio lines.
bench-scale: setup
	$(BIN)/python -m bench.scale

# Two domains on dagster-celery (Redis broker, fake server at 300 ms): one worker, then two; celery_2_vs_1=.
bench-celery: setup
	$(BIN)/python -m bench.celery_workers

# Embedding throughput per backend (torch, ONNX, ONNX int8, torch bf16, OpenVINO) next to sentence-transformers, same run.
bench-embed: setup
	$(BIN)/python -m bench.embeddings

# A 4-domain backfill through the Dagster daemon, before/after run-granularity pools: wall and CPU.
bench-backfill: setup
	$(BIN)/python -m bench.backfill

# An unchanged rerun of the demo domain through the Dagster job: seconds, model calls, ratio to the first run.
bench-rerun: setup
	$(BIN)/python -m bench.rerun

# The gate against six hand-labelled domains (tests/data/judge_bench), with and without problem and
# conditions: leave-one-domain-out Cohen's kappa per domain and signal (rules, the panel of
# SYNTH_PROFILE, default local, embeddings, token probabilities); last line judge_kappa_lodo=.
bench-judges: setup
	$(BIN)/python -m bench.judges

# The built-in degenerate-text checks on real text from this machine (false positives) and on a
# derailed set (recall); last lines text_*=.
bench-text: setup
	$(BIN)/python -m bench.text_checks

# The decontamination index at 10k and 100k rows against 10k eval rows, next to a plain Python set.
bench-decon: setup
	$(BIN)/python -m bench.decontamination

bench: bench-llm bench-quality bench-embed bench-text bench-decon

clean-warehouse:
	rm -rf warehouse
