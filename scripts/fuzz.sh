#!/usr/bin/env bash
# Fuzzes what Sluice parses from the outside: WebSocket client frames and queued message
# bodies (fuzz/, libFuzzer through cargo-fuzz).
# It runs each target for SECONDS (default 15, or SLUICE_FUZZ_SECS), starting from the
# corpus; new inputs go to a temporary directory, crashes to fuzz/artifacts/<target>/. The
# seed corpus and every saved crash (fuzz/regressions/) are replayed on stable Rust by the
# workspace's tests (crates/sluice-proto/tests/fuzz_corpus.rs).
# cargo-fuzz asks for nightly flags; the machine's stable toolchain takes them with
# RUSTC_BOOTSTRAP=1. No sanitizer: the crates under test forbid unsafe code, so panics and
# failed assertions are what the fuzzer looks for.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-${SLUICE_FUZZ_SECS:-15}}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in client_frame queued_message; do
  echo "==> fuzzing $target for ${secs}s" >&2
  mkdir -p "$work/$target"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "$work/$target" "fuzz/corpus/$target" \
      -- -max_total_time="$secs" -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/; add it to fuzz/regressions/$target/ with the fix" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^Done" "$work/$target.log" >&2 || true
done
