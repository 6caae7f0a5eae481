#!/usr/bin/env bash
# Runs the whole test suite: unit, conformance, property, end-to-end and crash tests.
# Installs what it needs when missing (scripts/install-test-deps.sh: cargo-nextest,
# redis-server); tests start their own servers on free loopback ports and stop them.
# Usage: scripts/test.sh [nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "==> cargo build (every target, so compile errors show before any test runs)" >&2
cargo build --locked --workspace --all-targets

echo "==> tests" >&2
cargo nextest run --locked --workspace --no-fail-fast "$@"
