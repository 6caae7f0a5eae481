#!/usr/bin/env python3
"""Offline checks of deploy/: what the test suite runs (crates/sluice/tests/deploy.rs).

  check.py kubernetes --sluice BIN   render every overlay with `kubectl kustomize`, validate each
                                     object (built-in kinds with kubernetes-validate, custom
                                     resources with deploy/kubernetes/schemas), and check that
                                     the overlays agree with the program and with each other
  check.py docker                    hadolint deploy/Dockerfile
  check.py cloudformation            cfn-lint and checkov on deploy/cloudformation/sluice.yaml, and
                                     its tables and queues against migrations/ and `sluice migrate`
  check.py env OVERLAY COMPONENT     the environment the rendered manifests give COMPONENT's
                                     container, as JSON (values of Secrets are left out)

Run it with the Python of .test-services/deploy-tools (scripts/install-test-deps.sh), whose bin/
also holds kubectl, hadolint, cfn-lint and checkov. Exits 1 with every problem found.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TOOLS = pathlib.Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"


def fail(problems):
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


def tool(name):
    path = TOOLS / name
    if not path.exists():
        fail([f"{path} is missing: run scripts/install-test-deps.sh"])
    return str(path)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def render(overlay):
    import yaml

    out = run([tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)])
    if out.returncode != 0:
        fail([f"kubectl kustomize {overlay}: {out.stderr.strip()}"])
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def overlays():
    return sorted(p.name for p in (DEPLOY / "kubernetes" / "overlays").iterdir() if p.is_dir())


def pod_spec(obj):
    return obj.get("spec", {}).get("template", {}).get("spec")


def config_of(objects):
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("sluice-config")]
    return maps[0]["data"] if len(maps) == 1 else None


def container_env(objects, component):
    """The variables COMPONENT's `sluice` container gets: its ConfigMaps, then its own env."""
    workloads = [o for o in objects if pod_spec(o) and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    if len(workloads) != 1:
        fail([f"one workload of component {component}, found {len(workloads)}"])
    spec = pod_spec(workloads[0])
    container = next(c for c in spec["containers"] if c["name"] == "sluice")
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env, secrets = {}, {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            secrets[e["name"]] = f"{ref['name']}/{ref['key']}"
    return {"args": container.get("args", []), "env": env, "secrets": secrets}


def check_kubernetes(sluice):
    import jsonschema
    import kubernetes_validate

    problems = []
    schemas = {}
    for f in (DEPLOY / "kubernetes" / "schemas").glob("*.json"):
        group_version_kind = f.stem.rsplit("-", 1)
        schemas[(group_version_kind[0].replace("-", "/", 1), group_version_kind[1])] = json.loads(f.read_text())
    help_text = run([sluice, "serve", "--help"]).stdout + run([sluice, "--help"]).stdout
    options = set(re.findall(r"env: (SLUICE_[A-Z0-9_]+)", help_text))
    if not options:
        fail([f"{sluice} serve --help lists no SLUICE_* variables"])
    for overlay in overlays():
        objects = render(overlay)
        kinds = {}
        for obj in objects:
            where = f"{overlay}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            kinds.setdefault(obj["kind"], []).append(obj)
            key = (obj["apiVersion"], obj["kind"])
            if key in schemas:
                for e in jsonschema.Draft7Validator(schemas[key]).iter_errors(obj):
                    problems.append(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where}: {'/'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{where}: no schema for {key} (add one to deploy/kubernetes/schemas)")
        config = config_of(objects)
        if config is None:
            problems.append(f"{overlay}: exactly one sluice-config ConfigMap")
            continue
        for name in config:
            if name.startswith("SLUICE_") and name not in options:
                problems.append(f"{overlay}: sluice-config sets {name}, which no `sluice` option reads")
        grace = int(config.get("SLUICE_SHUTDOWN_GRACE_SECS", "30"))
        services = {s["metadata"]["name"]: s for s in kinds.get("Service", [])}
        for obj in objects:
            spec = pod_spec(obj)
            if not spec:
                continue
            where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
            c = next(c for c in spec["containers"] if c["name"] == "sluice")
            if c.get("args", [None])[0] not in ("serve", "gateway", "worker"):
                problems.append(f"{where}: runs {c.get('args')}, not a role")
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if spec.get("terminationGracePeriodSeconds", 30) < pre_stop + grace:
                problems.append(f"{where}: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} < preStop {pre_stop} + SLUICE_SHUTDOWN_GRACE_SECS {grace}")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if ports.get("admin") != int(config["SLUICE_ADMIN_ADDR"].rsplit(":", 1)[1]):
                problems.append(f"{where}: port admin is not SLUICE_ADMIN_ADDR")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = c.get(probe, {}).get("httpGet")
                if not get or get["port"] != "admin" or get["path"] not in ("/healthz", "/readyz"):
                    problems.append(f"{where}: {probe} is not an HTTP probe of the admin port")
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False and spec["securityContext"].get("runAsNonRoot")):
                problems.append(f"{where}: not read-only, non-root and without privilege escalation")
            labels = obj["spec"]["template"]["metadata"]["labels"]
            for name, svc in services.items():
                sel = svc["spec"]["selector"]
                if all(labels.get(k) == v for k, v in sel.items()):
                    for port in svc["spec"]["ports"]:
                        if port["targetPort"] not in ports:
                            problems.append(f"{where}: Service {name} sends to port {port['targetPort']}, which it does not have")
        for so in kinds.get("ScaledObject", []):
            lanes = int(config.get("SLUICE_SQS_LANES", "4"))
            prefix = config.get("SLUICE_RESOURCE_PREFIX", "sluice")
            names = [f"{prefix}-bulk.fifo"] + [f"{prefix}-bulk-{i}.fifo" for i in range(1, lanes)]
            triggers = so["spec"]["triggers"]
            if sorted(t["metadata"]["queueURL"] for t in triggers) != sorted(names):
                problems.append(f"{overlay}: ScaledObject watches {[t['metadata']['queueURL'] for t in triggers]}, the lanes are {names}")
            if any(t["metadata"]["awsRegion"] != config.get("AWS_REGION") for t in triggers):
                problems.append(f"{overlay}: ScaledObject's awsRegion is not AWS_REGION {config.get('AWS_REGION')}")
            formula = so["spec"]["advanced"]["scalingModifiers"]["formula"]
            if sorted(re.findall(r"[a-z][a-z0-9]*", formula)) != sorted(t["name"] for t in triggers):
                problems.append(f"{overlay}: the scaling formula {formula!r} does not sum every trigger")
            target = so["spec"]["scaleTargetRef"]["name"]
            if not any(o["kind"] == "Deployment" and o["metadata"]["name"] == target for o in objects):
                problems.append(f"{overlay}: ScaledObject scales {target}, which is not a Deployment here")
        print(f"ok {overlay}: {len(objects)} objects rendered and valid", file=sys.stderr)
    fail(problems)


def check_docker():
    out = run([tool("hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")])
    fail([f"hadolint:\n{out.stdout}{out.stderr}"] if out.returncode != 0 else [])


def load_template():
    from cfnlint.decode import decode

    template, matches = decode(str(DEPLOY / "cloudformation" / "sluice.yaml"))
    if matches:
        fail([f"cannot read the template: {m}" for m in matches])
    return template


def sub_name(value):
    """`!Sub "${Prefix}-x"` as "${PREFIX}-x", the migrations' spelling."""
    if isinstance(value, dict) and "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        return value["Fn::Sub"].replace("${Prefix}", "${PREFIX}")
    return value


def check_cloudformation():
    problems = []
    template_path = str(DEPLOY / "cloudformation" / "sluice.yaml")
    out = run([tool("cfn-lint"), template_path])
    if out.returncode != 0:
        problems.append(f"cfn-lint:\n{out.stdout}{out.stderr}")
    out = run([tool("checkov"), "-f", template_path, "--framework", "cloudformation", "--quiet", "--compact", "--skip-download"])
    if out.returncode != 0:
        problems.append(f"checkov:\n{out.stdout}{out.stderr}")
    resources = load_template()["Resources"]
    tables = {sub_name(r["Properties"]["TableName"]): r["Properties"] for r in resources.values() if r["Type"] == "AWS::DynamoDB::Table"}
    migrations = sorted((ROOT / "migrations" / "dynamodb").glob("*.json"))
    for f in migrations:
        want = json.loads(f.read_text())
        got = tables.pop(want["TableName"], None)
        if got is None:
            problems.append(f"{f.name}: no table {want['TableName']} in the template")
            continue
        for key in ("AttributeDefinitions", "KeySchema"):
            if got.get(key) != want.get(key):
                problems.append(f"{f.name}: {key} differs: template {got.get(key)}, migration {want.get(key)}")
        strip = lambda gsis: [{k: g[k] for k in ("IndexName", "KeySchema", "Projection")} for g in gsis or []]
        if strip(got.get("GlobalSecondaryIndexes")) != strip(want.get("GlobalSecondaryIndexes")):
            problems.append(f"{f.name}: GlobalSecondaryIndexes differ")
        if got.get("TimeToLiveSpecification") != want.get("TimeToLiveSpecification"):
            problems.append(f"{f.name}: TimeToLiveSpecification differs: {got.get('TimeToLiveSpecification')} vs {want.get('TimeToLiveSpecification')}")
        if got.get("PointInTimeRecoverySpecification") != {"PointInTimeRecoveryEnabled": True}:
            problems.append(f"{f.name}: point-in-time recovery is off")
    problems += [f"table {t} is in the template but in no migration" for t in tables]
    # The queue attributes `sluice migrate --with-queues` sets, read from its source.
    source = (ROOT / "crates" / "sluice-aws" / "src" / "migrate.rs").read_text()
    attrs = dict(re.findall(r'QueueAttributeName::(\w+), "([^"]+)"', source))
    if not attrs:
        problems.append("no queue attributes found in crates/sluice-aws/src/migrate.rs")
    queues = {sub_name(r["Properties"]["QueueName"]): r["Properties"] for r in resources.values() if r["Type"] == "AWS::SQS::Queue"}
    lanes = int(re.search(r"pub const DEFAULT_LANES: u32 = (\d+);", (ROOT / "crates/sluice-aws/src/lib.rs").read_text()).group(1))
    want_queues = ["${PREFIX}-bulk-dlq.fifo", "${PREFIX}-bulk-held.fifo", "${PREFIX}-bulk.fifo"] + [f"${{PREFIX}}-bulk-{i}.fifo" for i in range(1, lanes)]
    if sorted(queues) != sorted(want_queues):
        problems.append(f"queues {sorted(queues)}, `sluice migrate` makes {sorted(want_queues)}")
    for name, props in queues.items():
        for attr, value in attrs.items():
            got = props.get(attr)
            if str(got).lower() != value.lower():
                problems.append(f"queue {name}: {attr} is {got}, `sluice migrate` sets {value}")
        redrive = "RedrivePolicy" in props
        if redrive != (name not in ("${PREFIX}-bulk-dlq.fifo", "${PREFIX}-bulk-held.fifo")):
            problems.append(f"queue {name}: a redrive policy only and always on the lanes")
    fail(problems)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kubernetes")
    k.add_argument("--sluice", required=True, help="the sluice binary, whose --help lists the SLUICE_* variables")
    sub.add_parser("docker")
    sub.add_parser("cloudformation")
    e = sub.add_parser("env")
    e.add_argument("overlay")
    e.add_argument("component")
    a = p.parse_args()
    if a.what == "kubernetes":
        check_kubernetes(a.sluice)
    elif a.what == "docker":
        check_docker()
    elif a.what == "cloudformation":
        check_cloudformation()
    else:
        print(json.dumps(container_env(render(a.overlay), a.component), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
