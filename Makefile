# clicklake: `make demo` and `make test` set everything up on a bare machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= clicklake-demo
DEMO_EVENTS ?= 50000
# --no-serve stops after the summary instead of serving the dashboard.
DEMO_FLAGS ?=

.PHONY: help install spark-jars spark-install postgresql test-deps demo test test-fast bench bench-models bench-spark lint format clean

help:
	@echo "make demo   - install, generate a clickstream, send it through the collector into Iceberg, build the models, print the summary, serve the dashboard (DEMO_FLAGS=--no-serve: stop after the summary)"
	@echo "make test   - install and run every test (unit, end-to-end, crash tests)"
	@echo "make bench  - run the pipeline and enrichment benchmarks and update bench/RESULTS.md"
	@echo "make bench-models - the 10M-event model build against Spark local (long)"
	@echo "make lint   - ruff and mypy"

$(STAMP): pyproject.toml setup.py src/clicklake/events/_cdecode.c src/clicklake/enrich/_ckernels.c src/clicklake/_cbuffer.h src/clicklake/_carrow.h
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (3.11+)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# An editable install leaves clicklake's own modules uncompiled, and Python compiles them again
# at every start when it may not write bytecode (PYTHONDONTWRITEBYTECODE, a read-only checkout):
# ~0.3 CPU s per `clicklake` process. pip compiles the modules of a regular install; this does
# the same here, each time (only changed modules are compiled again).
install: $(STAMP)
	@$(BIN)/python -m compileall -q src/clicklake >/dev/null

# Debian's Chromium for the browser tests (Playwright drives it with executable_path; no browser download).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The Spark engine: PySpark (the `spark` extra) and its JVM jars from Maven Central (deploy/spark/pom.xml).
SPARK_JARS  := .cache/jars/spark/.stamp
SPARK_STAMP := $(VENV)/.spark-stamp
$(SPARK_JARS): deploy/spark/pom.xml
	@command -v mvn >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven openjdk-17-jre-headless; }
	rm -rf .cache/jars/spark
	mvn -q -s deploy/spark/settings.xml -f deploy/spark/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=$(CURDIR)/.cache/jars/spark -DincludeScope=runtime
	@touch $@

spark-jars: $(SPARK_JARS)

$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	@touch $@

spark-install: install $(SPARK_STAMP) $(SPARK_JARS)

# Debian's PostgreSQL for the shared-catalog tests (the tests start their own server on a free port).
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))
postgresql:
	@test -n "$(PG_CTL)" || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

test-deps: install $(CHROMIUM) spark-install postgresql

# Segment's browser SDK from npm, for the browser test (its standalone bundle is dist/umd/index.js).
SEGMENT_SDK_VERSION := 1.84.3
SEGMENT_SDK := .cache/npm/node_modules/@segment/analytics-next/dist/umd/index.js
$(SEGMENT_SDK):
	command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	npm install --prefix .cache/npm --no-save --no-audit --no-fund --ignore-scripts --loglevel=error @segment/analytics-next@$(SEGMENT_SDK_VERSION)
	@test -f $@ && touch $@

test-deps: $(SEGMENT_SDK)

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/clicklake --data-dir $(DEMO_DIR) demo --events $(DEMO_EVENTS) $(DEMO_FLAGS)

test: test-deps
	$(BIN)/python -m pytest -q

test-fast: test-deps
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/enrich_throughput.py
	$(BIN)/python bench/enrich_geo_privacy.py
	$(BIN)/python bench/collector_load.py
	$(BIN)/python bench/compaction.py
	$(MAKE) bench-kafka

# The 10M-event model build takes a while (generation and ingest first); run it on its own.
bench-models: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/models_build.py

# The Spark engine against the local engine on 1M events (long; --events N for a quick check).
bench-spark: spark-install
	$(BIN)/python bench/spark_vs_local.py
# Dashboard API latency over 10M events with 20 concurrent clients (generation and model build first; long).
.PHONY: bench-api
bench-api: install
	$(BIN)/python bench/api_latency.py

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# A local Kafka broker (KRaft, jars from Maven Central into .cache/) on 127.0.0.1:$(KAFKA_PORT).
KAFKA_DIR  ?= .cache/kafka/broker
KAFKA_PORT ?= 9092
.PHONY: kafka-jars kafka-start kafka-stop bench-kafka
kafka-jars:
	deploy/kafka/kafka.sh jars

kafka-start: kafka-jars
	deploy/kafka/kafka.sh start $(KAFKA_DIR) $(KAFKA_PORT)

kafka-stop:
	deploy/kafka/kafka.sh stop $(KAFKA_DIR)

# The Kafka tests start their own broker from these jars.
test-deps: kafka-jars

bench-kafka: install kafka-jars
	$(BIN)/python bench/collector_load_kafka.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache bench/out
