# Order service. `just` lists the recipes.

set dotenv-load := false

# List the recipes.
default:
    @just --list

# Start Redis and PostgreSQL if none answers, then run the service (all roles).
run *ARGS: services
    cargo run --release --bin orders -- serve {{ARGS}}

# Format check, clippy with warnings denied, every test (unit, integration, the fault-injection
# suite, the console in headless Chromium), and schemathesis against the OpenAPI document. Starts
# (or installs) Redis and PostgreSQL, and installs Chromium and chromedriver when missing.
test:
    scripts/services.sh --with-browser
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo nextest run --locked --no-fail-fast
    scripts/contract.sh

# Contract fuzzing: schemathesis against the running service and its OpenAPI document.
contract: services
    scripts/contract.sh

# Make sure Redis (append-only file on) and PostgreSQL answer, installing them if missing.
services:
    scripts/services.sh

# Apply the database migrations.
migrate: services
    cargo run --release --bin orders -- migrate

# Send orders to a running service: `just load --count 10000 --concurrency 64`.
load *ARGS:
    scripts/load.sh {{ARGS}}

# Formatting and clippy only.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings

# Benchmarks: ingest vs a no-Redis baseline, drain, steady, realistic, idle. Writes bench-results/.
bench: services
    scripts/bench.sh

# One abusive client against the real binary (also part of `just test`): slow heads, a flood past
# the connection cap, half-sent bodies, h2c, a client that stops reading, a stuck shutdown. Prints
# `attack: held, peak RSS N MiB, healthz p99 N ms`.
abuse: services
    cargo nextest run --locked --test abuse --no-capture

# The fault-injection suite: private Redis and PostgreSQL, the real binary, faults on purpose.
chaos: services
    cargo nextest run --locked --test chaos --no-capture
