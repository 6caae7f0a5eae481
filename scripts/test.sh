#!/usr/bin/env bash
# Runs the whole test suite: unit, conformance, property, end-to-end, crash and browser
# tests, and a bounded fuzzing pass over the client frame parser and queued message decoding.
# Installs what it needs when missing (scripts/install-test-deps.sh: cargo-nextest,
# redis-server, DynamoDB Local, moto server, boto3, chromium, playwright-core), starts DynamoDB Local and moto server on
# free loopback ports for the run and stops them after (scripts/with-test-services.sh); tests
# that need Redis start their own redis-server.
# Usage: scripts/test.sh [nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "==> cargo build (every target, so compile errors show before any test runs)" >&2
cargo build --locked --workspace --all-targets

echo "==> fuzzing (bounded; scripts/fuzz.sh)" >&2
scripts/fuzz.sh

echo "==> tests" >&2
scripts/with-test-services.sh cargo nextest run --locked --workspace --no-fail-fast "$@"
