#!/usr/bin/env bash
# Runs the whole test suite: unit, conformance, property, end-to-end and crash tests.
# Installs what it needs (cargo-nextest) when missing. Usage: scripts/test.sh [nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

echo "==> cargo build (every target, so compile errors show before any test runs)" >&2
cargo build --locked --workspace --all-targets

echo "==> tests" >&2
cargo nextest run --locked --workspace --no-fail-fast "$@"
