#!/usr/bin/env bash
# Lint, type-check and run the whole test suite; always stop the local broker
# afterwards, pass or fail. The pytest session starts (or reuses) the broker
# itself, through deploy.localkafka, so `pytest` alone works too; teardown is
# `livepulse kafka down`.
# Extra arguments go to pytest, e.g. deploy/run-tests.sh -x -q tests/unit
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

# The module directly if the CLI itself is broken: a broker must never be left behind.
stop_broker() { .venv/bin/livepulse kafka down || "$PY" -m deploy.localkafka down || true; }
trap stop_broker EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PY" -m ruff check streams schemas deploy loadtest tests
"$PY" -m mypy
cargo fmt --check --manifest-path schemas/native/Cargo.toml
cargo fmt --check --manifest-path streams/native/Cargo.toml
"$PY" -m pytest tests "$@"
