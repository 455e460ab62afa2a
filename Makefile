# campaignops — two entry points for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
UV_VERSION := 0.13.9

.PHONY: install java system-packages demo down status test test-unit test-slow test-soak test-e2e bench lock clean-state

install: java system-packages $(STAMP)

## Debian packages the product uses beyond Python: Chromium (the browser test drives the system browser;
## Playwright cannot download its own here), Redis and Postgres (stack up --profile distributed).
SYSTEM_PACKAGES := chromium:chromium redis-server:redis-server pg_ctlcluster:postgresql
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "WARNING: missing$$missing and no root apt-get here: install them for the browser test and the distributed profile" >&2; \
	  fi; fi

## Java 17 for the Spark engine (pyspark starts a JVM): Debian's package if `java` is missing.
java:
	@java -version >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null; then \
	    echo "java not found: installing openjdk-17-jre-headless with apt-get (for the Spark engine)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openjdk-17-jre-headless; \
	  else \
	    echo "WARNING: java not found and no apt-get here: install a Java 17 runtime for the Spark engine (--engine spark, tests marked spark)" >&2; \
	  fi; }

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip >/dev/null
	$(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $(STAMP)

## Start the local stack, generate the sample world, run retrain + score through Airflow.
demo: install
	$(BIN)/campaignops stack up
	$(BIN)/python -m campaignops.demo

down:
	$(BIN)/campaignops stack down

status:
	$(BIN)/campaignops stack status

## Unit tests, then the end-to-end tests that start their own real stack on free ports.
test: install
	$(BIN)/python -m pytest -q --durations=15 -m "not e2e and not slow"
	$(BIN)/python -m pytest -q --durations=10 -m "slow and not soak"
	$(BIN)/python -m pytest -q --durations=20 -m e2e

test-unit: install
	$(BIN)/python -m pytest -q --durations=15 -m "not e2e and not slow"

test-slow: install
	$(BIN)/python -m pytest -q --durations=10 -m "slow and not soak"

test-soak: install
	$(BIN)/python -m pytest -q -m soak

test-e2e: install
	$(BIN)/python -m pytest -q --durations=20 -m e2e

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

## Re-pin dependencies (needs the package registry).
lock:
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -q --no-header -o requirements.lock
