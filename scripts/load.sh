#!/usr/bin/env bash
# Load test of the order service: builds the orders-load binary (release, quietly) and runs it.
# All arguments go to orders-load; by default it targets the local service at
# http://127.0.0.1:8080 and Redis at redis://127.0.0.1:6379. See `scripts/load.sh --help`.
#
#   scripts/load.sh --count 10000 --concurrency 64
#   scripts/load.sh --batch 100 --count 50000
#   scripts/load.sh --rate 2000 --duration 10
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --bin orders-load
exec target/release/orders-load "$@"
