# Tether tasks.  On a fresh machine run them through ./dev (it makes .venv first):
#   ./dev up    ./dev test    ./dev lint    ./dev fuzz    ./dev bench

set shell := ["bash", "-euo", "pipefail", "-c"]

# Bring the system up: embedded Postgres, both services, the demo page.
up *ARGS:
    python -m tether_dev.up {{ARGS}}

# The whole suite: lint, types, then every test (browser tests included).
test *ARGS: lint
    bash infra/ensure-system-packages.sh
    python -m tether_dev.runtests {{ARGS}}

# ruff (lint + format check) and mypy --strict.
lint:
    ruff check .
    ruff format --check .
    mypy

# Format the code in place.
fmt:
    ruff format .
    ruff check --fix .

# QA: every endpoint and frame type fuzzed with a large budget, with a readable report.
fuzz *ARGS:
    python -m tests.fuzz.run {{ARGS}}

# Side-by-side benchmarks with the peers (writes bench/RESULTS.md).
bench *ARGS:
    python -m bench.run {{ARGS}}
