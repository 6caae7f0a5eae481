#!/usr/bin/env bash
# Runs the chaos scenario (crates/sluice/tests/chaos.rs) larger than the test command does,
# on the emulators, and prints the faults injected and the invariants checked.
# Usage: scripts/chaos.sh [SECONDS] [RECIPIENTS] [ROOMS]
#   CHAOS_SEED=N replays a schedule (the seed is printed at the start of every run);
#   CHAOS_FAULT_RATE (default 0.15) is the share of transactions the proxy cancels.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_SECS="${1:-120}" CHAOS_RECIPIENTS="${2:-5000}" CHAOS_ROOMS="${3:-8}"
export CHAOS_SEED="${CHAOS_SEED:-$RANDOM$RANDOM}"
scripts/install-test-deps.sh
scripts/with-test-services.sh cargo nextest run --locked -p sluice --test chaos --no-capture 2>&1 \
  | grep -E "^(chaos|CHAOS)|panicked|assert|PASS|FAIL|Summary"
