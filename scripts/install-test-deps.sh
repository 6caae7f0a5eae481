#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, when missing:
# cargo-nextest (cargo) and redis-server (apt-get). Safe to run again.
set -euo pipefail

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # The package starts a system-wide daemon where systemd runs; the tests start their own.
fi
redis-server --version >&2
