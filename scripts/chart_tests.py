#!/usr/bin/env python3
"""Unit tests of the Helm chart: assertions on `helm template` output.

Usage: chart_tests.py --helm PATH [--helm PATH ...] --chart helm/gatehouse

Checks, for each Helm given: replica counts and the workers' coordinator list, the etcd
endpoint wiring (external and bundled), the workers' termination grace being longer
than their drain grace, the security defaults of every pod, the worker rollout, the
ServiceMonitor; and, with the first Helm, that every value in values.yaml is used:
changing it changes the rendered output (with the default values, or with every
optional feature on). Needs PyYAML. Exits non-zero on the first failing check.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RELEASE = "gh"
NAMESPACE = "ci"
FULLNAME = "gh-gatehouse"

# Values no template can use yet, with the reason; the schema refuses any other value.
RESERVED: dict[str, str] = {}

# The test certificates (proto/testdata/tls): what the TLS Secret holds in test_args_parse.
TEST_CERTS = Path(__file__).resolve().parent.parent / "proto" / "testdata" / "tls"
TLS_DIR = "/etc/gatehouse/tls"

# Every optional feature on (a base for the every-value test).
ALL_FEATURES = {
    "etcd": {"deploy": True},
    "worker": {
        "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
        "cache": {"disk": {"enabled": True}},
        "memoryPressure": "0.8",
        "labels": {"pool": "ci"},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "force": True}},
    "otel": {"endpoint": "http://collector:4317", "resourceAttributes": "deployment.environment=ci"},
    "tls": {"enabled": True, "secretName": "gatehouse-tls"},
    "git": {"cacheSize": "8Gi", "credentialsSecret": "gatehouse-git"},
}


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Chart:
    def __init__(self, helm: str, chart: Path):
        self.helm = helm
        self.chart = chart
        self.tmp = Path(tempfile.mkdtemp())
        self.n = 0

    def render_raw(self, values: dict | None = None, sets: list[str] | None = None):
        args = [self.helm, "template", RELEASE, str(self.chart), "--namespace", NAMESPACE]
        if values is not None:
            self.n += 1
            f = self.tmp / f"values-{self.n}.yaml"
            f.write_text(yaml.safe_dump(values))
            args += ["-f", str(f)]
        for s in sets or []:
            args += ["--set", s]
        return subprocess.run(args, capture_output=True, text=True)

    def render(self, values: dict | None = None, sets: list[str] | None = None) -> list[dict]:
        r = self.render_raw(values, sets)
        if r.returncode != 0:
            raise Failed(f"helm template failed ({values}, {sets}):\n{r.stderr}")
        return [d for d in yaml.safe_load_all(r.stdout) if d]


def objects(docs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    out = [d for d in docs if d["kind"] == kind]
    if component:
        out = [d for d in out
               if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    return out


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = objects(docs, kind, component)
    check(len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}")
    return found[0]


def container(workload: dict, name: str | None = None) -> dict:
    cs = workload["spec"]["template"]["spec"]["containers"]
    if name:
        cs = [c for c in cs if c["name"] == name]
    check(len(cs) >= 1, f"no container {name} in {workload['metadata']['name']}")
    return cs[0]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in a container's args."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", duration)
    check(m is not None, f"not a duration: {duration}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


# --------------------------------------------------------------------------- tests

def test_replica_counts(c: Chart) -> None:
    docs = c.render()
    coord = one(docs, "StatefulSet", "coordinator")
    check(coord["spec"]["replicas"] == 3, "3 coordinators by default")
    worker = one(docs, "Deployment", "worker")
    check(worker["spec"]["replicas"] == 2, "2 workers by default")
    docs = c.render(sets=["coordinator.replicas=5", "worker.replicas=4"])
    check(one(docs, "StatefulSet", "coordinator")["spec"]["replicas"] == 5, "coordinator.replicas")
    w = one(docs, "Deployment", "worker")
    check(w["spec"]["replicas"] == 4, "worker.replicas")
    urls = flag(container(w)["args"], "--coordinator") or ""
    check(len(urls.split(",")) == 5, f"workers list every coordinator replica: {urls}")
    for i in range(5):
        check(f"{FULLNAME}-coordinator-{i}." in urls, f"coordinator {i} in {urls}")
    pdb = one(docs, "PodDisruptionBudget")
    check(pdb["spec"].get("maxUnavailable") == 1, "coordinator PDB maxUnavailable 1")
    # With the autoscaler on, the Deployment leaves replicas to it.
    docs = c.render(sets=["worker.autoscaling.enabled=true"])
    check("replicas" not in one(docs, "Deployment", "worker")["spec"], "HPA owns replicas")
    hpa = one(docs, "HorizontalPodAutoscaler")
    check(hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment", "worker")["metadata"]["name"],
          "the HPA scales the worker Deployment")


def test_etcd_wiring(c: Chart) -> None:
    docs = c.render(values={"etcd": {"endpoints": ["http://a:2379", "http://b:2379"]}})
    args = container(one(docs, "StatefulSet", "coordinator"))["args"]
    check(flag(args, "--etcd") == "http://a:2379,http://b:2379", f"external endpoints: {args}")
    check(not objects(docs, "StatefulSet", "etcd"), "no bundled etcd with external endpoints")
    docs = c.render(values={"etcd": {"deploy": True}})
    args = container(one(docs, "StatefulSet", "coordinator"))["args"]
    etcd = one(docs, "StatefulSet", "etcd")
    svc = [s for s in objects(docs, "Service", "etcd") if s["spec"].get("clusterIP") != "None"]
    check(len(svc) == 1, "one client Service for the bundled etcd")
    port = svc[0]["spec"]["ports"][0]["port"]
    check(flag(args, "--etcd") == f"http://{svc[0]['metadata']['name']}:{port}",
          f"bundled etcd wiring: {flag(args, '--etcd')}")
    check(etcd["spec"]["replicas"] == 3, "3 etcd members")
    eargs = " ".join(container(etcd).get("args", []) + container(etcd).get("command", []))
    members = re.search(r"--initial-cluster[= ](\S+)", eargs)
    check(members is not None and members.group(1).count("=http") == 3,
          f"the initial cluster lists 3 members: {eargs}")
    r = c.render_raw(values={"etcd": {"deploy": False, "endpoints": []}})
    check(r.returncode != 0 and "etcd" in r.stderr, "no etcd at all is refused with a message")


def test_drain_grace(c: Chart) -> None:
    for drain in (60, 300):
        docs = c.render(values={"worker": {"drainGraceSeconds": drain}})
        w = one(docs, "Deployment", "worker")
        grace = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        arg = flag(container(w)["args"], "--drain-grace")
        check(arg is not None and seconds(arg) == drain, f"--drain-grace {arg} for {drain}")
        check(grace > drain, f"terminationGracePeriodSeconds {grace} must exceed the drain {drain}")
        strategy = w["spec"]["strategy"]
        check(strategy["type"] == "RollingUpdate"
              and strategy["rollingUpdate"]["maxUnavailable"] == 0,
              "workers roll one at a time, each drained")


def test_security_defaults(c: Chart) -> None:
    docs = c.render(values=ALL_FEATURES)
    check(not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding",
                                                 "ClusterRoleBinding")],
          "no API permissions")
    sa = one(docs, "ServiceAccount")
    check(sa.get("automountServiceAccountToken") is False, "the ServiceAccount mounts no token")
    for name, spec in pod_specs(docs):
        check(spec.get("automountServiceAccountToken") is False, f"{name}: no token mounted")
        check(spec.get("serviceAccountName") == sa["metadata"]["name"], f"{name}: service account")
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
        for ctr in spec["containers"] + spec.get("initContainers", []):
            sc = ctr.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, f"{name}/{ctr['name']}: read-only root")
            check(sc.get("allowPrivilegeEscalation") is False, f"{name}/{ctr['name']}: escalation")
            check("ALL" in sc.get("capabilities", {}).get("drop", []),
                  f"{name}/{ctr['name']}: capabilities dropped")
            check(ctr.get("resources", {}).get("requests"), f"{name}/{ctr['name']}: requests")
    w = one(docs, "Deployment", "worker")
    mounts = {m["mountPath"] for m in container(w).get("volumeMounts", [])}
    check("/workspace" in mounts and "/tmp" in mounts, f"writable workspace and /tmp: {mounts}")


def test_probes_and_observability(c: Chart) -> None:
    docs = c.render(values=ALL_FEATURES)
    coord = container(one(docs, "StatefulSet", "coordinator"))
    check(coord["livenessProbe"]["httpGet"]["path"] == "/healthz", "coordinator liveness /healthz")
    plain = container(one(c.render(), "StatefulSet", "coordinator"))
    check("grpc" in plain["readinessProbe"], "coordinator readiness through gRPC health")
    worker = container(one(docs, "Deployment", "worker"))
    check(worker["readinessProbe"]["httpGet"]["path"] == "/readyz", "worker readiness /readyz")
    for ctr in (coord, worker):
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://collector:4317",
              f"{ctr['name']}: otel.endpoint wired")
    sms = objects(docs, "ServiceMonitor")
    check(len(sms) >= 1, "a ServiceMonitor when enabled")
    ports = {p.get("name") for s in objects(docs, "Service") for p in s["spec"]["ports"]}
    for sm in sms:
        for ep in sm["spec"]["endpoints"]:
            check(ep.get("port") in ports, f"ServiceMonitor port {ep.get('port')} exists")
            check(ep.get("path", "/metrics") == "/metrics", "scrapes /metrics")
    pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["metadata"]
    check(pod.get("annotations", {}).get("prometheus.io/scrape") == "true", "scrape annotations")
    docs = c.render()
    check(not objects(docs, "ServiceMonitor"), "no ServiceMonitor by default")


def env_of(ctr: dict) -> dict:
    return {e["name"]: e.get("value") for e in ctr.get("env", [])}


def test_tls(c: Chart) -> None:
    """TLS off: plaintext everywhere. TLS on: every gRPC URL is https, every gatehouse
    container (coordinator, worker, helm test) gets the Secret mounted read-only and the
    GATEHOUSE_TLS_* settings naming its files, and coordinators' readiness is /healthz
    (the kubelet's gRPC probe cannot speak TLS)."""
    urls_flags = ("--coordinator", "--advertise", "--cache-advertise")

    def gatehouse_containers(docs):
        out = [(f"StatefulSet/coordinator", one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]),
               (f"Deployment/worker", one(docs, "Deployment", "worker")["spec"]["template"]["spec"]),
               ("Pod/test", one(docs, "Pod", "test")["spec"])]
        return [(name, spec, spec["containers"][0]) for name, spec in out]

    docs = c.render()
    for name, spec, ctr in gatehouse_containers(docs):
        check(not [k for k in env_of(ctr) if k.startswith("GATEHOUSE_TLS_")], f"{name}: no TLS by default")
        for f in urls_flags:
            v = flag(ctr["args"], f)
            check(v is None or all(u.startswith("http://") for u in v.split(",")), f"{name}: {f} {v}")

    for client_auth, server_name in ((True, ""), (False, "gatehouse.example.org")):
        docs = c.render(values={"tls": {"enabled": True, "secretName": "gh-tls",
                                        "clientAuth": client_auth, "serverName": server_name}})
        for name, spec, ctr in gatehouse_containers(docs):
            urls = [u for f in urls_flags if (v := flag(ctr["args"], f)) for u in v.split(",")]
            check(urls and all(u.startswith("https://") for u in urls), f"{name}: https URLs: {urls}")
            env = env_of(ctr)
            check(env.get("GATEHOUSE_TLS_CERT") == f"{TLS_DIR}/tls.crt"
                  and env.get("GATEHOUSE_TLS_KEY") == f"{TLS_DIR}/tls.key"
                  and env.get("GATEHOUSE_TLS_CA") == f"{TLS_DIR}/ca.crt", f"{name}: TLS files: {env}")
            want = server_name or f"{FULLNAME}-coordinator.{NAMESPACE}.svc"
            check(env.get("GATEHOUSE_TLS_SERVER_NAME") == want, f"{name}: server name {env}")
            check((env.get("GATEHOUSE_TLS_CLIENT_AUTH") == "true") == client_auth,
                  f"{name}: client auth {client_auth}: {env}")
            mounts = [m for m in ctr.get("volumeMounts", []) if m["mountPath"] == TLS_DIR]
            check(len(mounts) == 1 and mounts[0].get("readOnly") is True, f"{name}: TLS mount {mounts}")
            vols = [v for v in spec.get("volumes", []) if v["name"] == mounts[0]["name"]]
            check(len(vols) == 1 and vols[0]["secret"]["secretName"] == "gh-tls"
                  and vols[0]["secret"]["defaultMode"] == 0o440, f"{name}: TLS volume {vols}")
        coord = container(one(docs, "StatefulSet", "coordinator"))
        check(coord["readinessProbe"].get("httpGet", {}).get("path") == "/healthz",
              f"coordinator readiness without the gRPC probe: {coord['readinessProbe']}")
    r = c.render_raw(values={"tls": {"enabled": True}})
    check(r.returncode != 0 and "secretName" in r.stderr, f"TLS without a Secret refused: {r.stderr}")


def test_git(c: Chart) -> None:
    """Coordinators and workers keep their mirrors on an emptyDir of git.cacheSize at
    --git-cache; git.credentialsSecret is mounted read-only at /etc/gatehouse/git and
    named by GIT_SSH_COMMAND and the store credential helper; without it, neither."""
    git_dir, creds = "/var/cache/gatehouse/git", "/etc/gatehouse/git"
    for values, secret in (({}, None), ({"git": {"cacheSize": "8Gi", "credentialsSecret": "gh-git"}}, "gh-git")):
        docs = c.render(values=values)
        for kind, name in (("StatefulSet", "coordinator"), ("Deployment", "worker")):
            spec = one(docs, kind, name)["spec"]["template"]["spec"]
            ctr = spec["containers"][0]
            check(flag(ctr["args"], "--git-cache") == git_dir, f"{name}: --git-cache {ctr['args']}")
            mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            cache = vols.get(mounts.get(git_dir, {}).get("name"), {})
            want = (values.get("git") or {}).get("cacheSize", "4Gi")
            check(cache.get("emptyDir", {}).get("sizeLimit") == want, f"{name}: git cache volume {cache}")
            env = env_of(ctr)
            if secret is None:
                check(creds not in mounts and "GIT_SSH_COMMAND" not in env, f"{name}: no credentials by default")
                continue
            m = mounts.get(creds, {})
            check(m.get("readOnly") is True, f"{name}: credentials mount {m}")
            v = vols.get(m.get("name"), {})
            check(v.get("secret", {}).get("secretName") == secret
                  and v["secret"].get("defaultMode") == 0o440, f"{name}: credentials volume {v}")
            check(f"-i {creds}/ssh-privatekey" in env.get("GIT_SSH_COMMAND", ""), f"{name}: ssh {env}")
            check(env.get("GIT_CONFIG_KEY_0") == "credential.helper"
                  and env.get("GIT_CONFIG_VALUE_0") == f"store --file={creds}/.git-credentials",
                  f"{name}: credential helper {env}")


def leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += leaves(v, path + ".")
        else:
            out.append((path, v))
    return out


def get_path(tree: dict, path: str):
    node = tree
    for k in path.split("."):
        node = node[k]
    return node


def set_path(tree: dict, path: str, value) -> dict:
    out = copy.deepcopy(tree)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def mutations(path: str, value) -> list[object]:
    key = path.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value - 1 if key.endswith("Percentage") and value >= 100 else value + 1]
    if isinstance(value, float):
        return [round(value - 0.05, 2)]
    if isinstance(value, list):
        if key == "endpoints":
            return [value + ["http://other:2379"]]
        if key == "extraEnv":
            return [[{"name": "GATEHOUSE_TEST", "value": "1"}]]
        if key == "tolerations":
            return [[{"key": "k", "operator": "Exists"}]]
        if key == "imagePullSecrets":
            return [[{"name": "pull"}]]
        if key == "drop":
            return [value + ["NET_RAW"]]
        return [value + ["--x"]]
    if isinstance(value, dict):  # empty map
        if key == "affinity":
            return [{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Exists"}]}]}}}]
        return [{"k": "v"}]
    if value is None:
        return ["x"]
    s = str(value)
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|Mi|Gi|Ki)?", s)
    if m:
        return [f"{int(m.group(1)) + 1}{m.group(2) or ''}"]
    choices = {
        "format": ["pretty"], "level": ["debug"], "pullPolicy": ["Always"],
        "type": ["NodePort", "RuntimeDefault", "Localhost"], "tag": ["9.9.9"],
        "memoryPressure": ["0.8"], "endpoint": ["http://collector:4317"],
        "resourceAttributes": ["k=v"], "storageClass": ["fast"],
        "targetMemoryUtilizationPercentage": [80], "memory": ["2Gi"],
    }
    if key in choices:
        return [x for x in choices[key] if x != value] or ["x"]
    if re.fullmatch(r"0\.\d+", s):
        return [str(round(float(s) - 0.05, 2))]
    return [s + "x" if s else "x"]


def test_every_value_is_used(c: Chart) -> None:
    values = yaml.safe_load((c.chart / "values.yaml").read_text())
    bases = {"default": {}, "all features": ALL_FEATURES}
    rendered = {name: c.render_raw(values=base).stdout for name, base in bases.items()}
    unused, refused = [], []
    for path, value in leaves(values):
        used, tried = False, 0
        for name, base in bases.items():
            # Change the value this base renders with (a base may set it already).
            effective = get_path(deep_merge(values, base), path)
            for mutated in mutations(path, effective):
                r = c.render_raw(values=set_path(base, path, mutated))
                if r.returncode != 0:
                    continue
                tried += 1
                if r.stdout != rendered[name]:
                    used = True
                    break
            if used:
                break
        if used:
            continue
        if tried == 0:
            refused.append(path)
        else:
            unused.append(path)
    unexplained = [p for p in refused if p not in RESERVED]
    check(not unused, f"values that change nothing in any render: {unused}")
    check(not unexplained, f"values whose every change is refused (not reserved): {unexplained}")
    print(f"    every value used: {len(leaves(values))} values checked; reserved: "
          + (", ".join(f"{p} ({RESERVED[p]})" for p in refused) or "none"))


def test_args_parse(c: Chart, gatehouse: str) -> None:
    """The rendered command lines are accepted by the real binary: every flag exists,
    every value parses and, with TLS on, the Secret's files (the test certificates here)
    load and serve. A usage error exits 2 at once, a server that cannot start exits 1; a
    valid command keeps running, retrying its unreachable etcd or coordinators, until it
    is stopped: any exit within 3 s fails."""
    import os
    import signal
    for values in ({}, ALL_FEATURES):
        docs = c.render(values=values)
        for kind, component in (("StatefulSet", "coordinator"), ("Deployment", "worker")):
            ctr = container(one(docs, kind, component))
            work = Path(tempfile.mkdtemp())
            # The TLS Secret's files: the test certificates.
            (work / "tls").mkdir()
            for src, dst in (("test.pem", "tls.crt"), ("test-key.pem", "tls.key"),
                             ("test-ca.pem", "ca.crt")):
                (work / "tls" / dst).write_bytes((TEST_CERTS / src).read_bytes())
            subst = {"$(POD_NAME)": "pod-0", "$(POD_IP)": "127.0.0.1", TLS_DIR: str(work / "tls")}
            args = []
            for a in ctr["args"]:
                for k, v in subst.items():
                    a = a.replace(k, v)
                a = re.sub(r"^0\.0\.0\.0:\d+$", "127.0.0.1:0", a)
                args.append(str(work) if a == "/workspace" else a)
            env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work)}
            for e in ctr.get("env", []):
                if "value" in e:
                    value = e["value"]
                    for k, v in subst.items():
                        value = value.replace(k, v)
                    env[e["name"]] = value
            env["HOME"] = str(work)
            proc = subprocess.Popen([os.path.abspath(gatehouse), *args], cwd=work, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            try:
                code = proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                continue
            err = proc.stderr.read() if proc.stderr else ""
            check(False, f"{component} exited {code} within 3 s:\n{args}\n{err}")


TESTS = [test_replica_counts, test_etcd_wiring, test_drain_grace, test_security_defaults,
         test_probes_and_observability, test_tls, test_git]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--helm", action="append", required=True)
    p.add_argument("--chart", type=Path, default=Path("helm/gatehouse"))
    p.add_argument("--gatehouse", help="a gatehouse binary: the rendered command lines "
                   "must parse with it")
    args = p.parse_args(argv)
    failed = 0
    for i, helm in enumerate(args.helm):
        c = Chart(helm, args.chart)
        version = subprocess.run([helm, "version", "--short"], capture_output=True,
                                 text=True).stdout.strip()
        tests = TESTS + ([test_every_value_is_used] if i == 0 else [])
        if i == 0 and args.gatehouse:
            gh = args.gatehouse
            tests.append(lambda c, gh=gh: test_args_parse(c, gh))
            tests[-1].__name__ = "test_args_parse"
        for t in tests:
            try:
                t(c)
                print(f"ok   {version} {t.__name__}")
            except Failed as e:
                failed += 1
                print(f"FAIL {version} {t.__name__}: {e}")
    if failed:
        print(f"{failed} chart test(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
