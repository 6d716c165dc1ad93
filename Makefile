# livepulse developer entry points. `make test` is what CI runs (via .ci/run).
# The local Kafka broker is deploy/localkafka.py, driven as `livepulse kafka ...`.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA := $(VENV)/bin/livepulse kafka

.PHONY: venv broker alertmanager prometheus kustomize dashboards test faults demo kafka-up kafka-down kafka-status clean distclean

venv: $(STAMP)

# Redone only when pyproject.toml or the native crates change (or the venv is missing). The
# install builds schemas/native and streams/native (Rust, through setuptools-rust): cargo must be on the PATH.
NATIVE_SRC := $(foreach crate,schemas/native streams/native,$(crate)/Cargo.toml $(crate)/Cargo.lock $(wildcard $(crate)/src/*.rs))
$(STAMP): pyproject.toml $(NATIVE_SRC)
	@command -v cargo >/dev/null || { echo "cargo not found: the native decoders need Rust (https://rustup.rs)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Fetch the Kafka jars from Maven Central (once; a marker records success).
broker: $(STAMP)
	$(KAFKA) fetch

# The real Alertmanager for the alert-forwarding tests, from Debian's package (root, or sudo).
alertmanager:
	@command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus-alertmanager; }

# Prometheus and promtool for the rule checks and the scrape test, from Debian's package (root, or sudo).
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus; }

# kustomize for rendering deploy/k8s in the tests, built once from its Go module into .cache/bin.
KUSTOMIZE_VERSION := v5.7.1
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
kustomize: .cache/bin/kustomize
.cache/bin/kustomize:
	GOBIN=$(CURDIR)/.cache/bin $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

# Regenerate the committed Grafana dashboards (deploy/grafana/*.json), the JSON Schemas (schemas/json) and the Kubernetes
# PrometheusRule from their sources; a test fails when the committed files are stale.
dashboards: venv
	$(PY) -m deploy.generate
	$(PY) -m schemas

# Lint, type-check, unit + integration tests; the broker is stopped afterwards, pass or fail.
test: venv broker alertmanager prometheus kustomize
	deploy/run-tests.sh

# The fault suite, full length: kill -9, frozen worker, rolling restart, broker restart, corrupt state,
# and hostile input (a clock 4 min fast, an input of hour-old events, 10^6 malformed messages, 10^6 new
# rooms), each against the ground truth (a broker of its own). `make test` runs its short form.
faults: venv broker
	$(PY) -m loadtest.faults

kafka-up: venv broker
	$(KAFKA) up

kafka-down:
	@if [ -x $(VENV)/bin/livepulse ]; then $(KAFKA) down; fi

kafka-status: venv
	$(KAFKA) status

# Stops every local broker we started, then removes their work dirs and tool caches.
clean:
	@if [ -x $(VENV)/bin/livepulse ]; then for dir in .cache/kafka/run-*; do \
		[ -d "$$dir" ] && $(KAFKA) down --dir "$$dir"; done; true; fi
	rm -rf .cache/kafka/run-* .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also the venv and the fetched jars.
distclean: clean
	rm -rf $(VENV) .cache

# Broker + worker + synthetic traffic with a spike, live in the terminal. DURATION=30 ends it by itself.
demo: venv broker
	$(PY) -m streams demo $(if $(DURATION),--duration $(DURATION))
