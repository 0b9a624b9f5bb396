#!/usr/bin/env bash
# Checks the deployment artefacts in docker/ without a cluster (issue 7):
# - renders docker/kubernetes with kustomize (kubectl kustomize), as is and with each
#   component enabled the way its comment says (workload-identity, ha for several
#   replicas, ha with ha/workload-identity), and validates every object against
#   Kubernetes' schemas (kubernetes-validate, strict, a fixed version);
# - checks that the kustomizations list every file and that the objects agree (the
#   DaemonSet's --mirror is the Service's ClusterIP, probes, mounts, names; with
#   several replicas: the peers' headless Service, the peer port in the container, the
#   Service and the NetworkPolicy, the local tier's size, the budget, the rollout);
# - runs the release binary the image contains (built as docker/Dockerfile builds it):
#   `ferry config check` on each ConfigMap's ferry.toml (with the Secrets' files where
#   the pod has them), `ferry node-config` with the
#   DaemonSet's arguments (without the Secret, as on a node), and `ferry serve` on
#   loopback to answer the probes' paths and /metrics, which must expose every metric
#   the Grafana dashboard queries.
set -euo pipefail
cd "$(dirname "$0")/.."

k8s_version=1.30.0
venv=target/k8s-venv
out=target/k8s-validate

if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
py="$venv/bin/python"
rm -rf "$out"
mkdir -p "$out"
# A variant: the base with these components uncommented in kustomization.yaml, in
# the order its comment gives.
render() {
  local variant=$1 src="$out/$1-src" component
  shift
  cp -r docker/kubernetes "$src"
  sed -i 's/^# components:$/components:/' "$src/kustomization.yaml"
  for component in "$@"; do
    if ! grep -q "^#   - $component\$" "$src/kustomization.yaml"; then
      echo "tests/k8s-validate.sh: kustomization.yaml no longer has the commented $component component" >&2
      exit 1
    fi
    sed -i "s|^#   - $component\$|  - $component|" "$src/kustomization.yaml"
  done
  kubectl kustomize "$src" >"$out/$variant.yaml"
}
variants=(base workload-identity ha ha-workload-identity)
if command -v kubectl >/dev/null; then
  kubectl kustomize docker/kubernetes >"$out/base.yaml"
  render workload-identity workload-identity
  render ha ha
  render ha-workload-identity ha ha/workload-identity
else
  # Without kubectl the components' patches cannot be applied: the base is rendered
  # by hand (resources, namespace, image), the other variants are not.
  echo "tests/k8s-validate.sh: no kubectl: base rendered without kustomize; the components' variants not checked" >&2
  variants=(base)
  "$py" tests/k8s_validate.py render docker/kubernetes >"$out/base.yaml"
fi
rendered=()
for variant in "${variants[@]}"; do rendered+=("$out/$variant.yaml"); done
"$py" tests/k8s_validate.py manifests "$out" "$k8s_version" "${rendered[@]}"

cargo build --release --locked --bin ferry
ferry="${CARGO_TARGET_DIR:-target}/release/ferry"

# The secrets are mounted files in the pod: the checked copy names the Secrets'
# (stand-in) values, laid out under $out/VARIANT-pod/ as the mounts would be.
for variant in "${variants[@]}"; do
  "$ferry" config check "$out/$variant.check.ferry.toml"
done

# The DaemonSet's node-config, with the config and the node's directory moved here.
for variant in "${variants[@]}"; do
  mapfile -t args < <("$py" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))))' \
    "$out/$variant.node-config-args.json")
  for i in "${!args[@]}"; do
    case "${args[$i]}" in
      /etc/ferry/ferry.toml) args[i]="$out/$variant.ferry.toml" ;;
      /host/etc/containerd/certs.d) args[i]="$out/$variant-certs.d" ;;
    esac
  done
  "$ferry" "${args[@]}"
  mirror=$(grep -o 'http://[0-9.]*:[0-9]*' "$out/$variant.node-config-args.json")
  for registry in contoso.azurecr.io mcr.microsoft.com; do
    hosts="$out/$variant-certs.d/$registry/hosts.toml"
    if ! grep -q "\[host.\"$mirror\"\]" "$hosts"; then
      echo "tests/k8s-validate.sh: $hosts does not point at $mirror" >&2
      exit 1
    fi
  done
done

# ferry serve on loopback: the probes' paths and /metrics for the dashboard.
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$out/serve.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[storage]
root = "$out/store"
[[upstream]]
name = "local"
registry = "registry.test"
url = "http://127.0.0.1:9"
EOF
"$ferry" serve --config "$out/serve.toml" >"$out/serve.log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS --max-time 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
for path in /healthz /readyz /metrics; do
  if ! curl -fsS --max-time 5 "http://127.0.0.1:$port$path" >"$out/get$(tr / _ <<<"$path")"; then
    echo "tests/k8s-validate.sh: ferry serve did not answer GET $path; its log:" >&2
    cat "$out/serve.log" >&2
    exit 1
  fi
done
kill "$serve_pid"
wait "$serve_pid" || true
trap - EXIT

"$py" tests/k8s_validate.py dashboard docker/grafana/ferry-dashboard.json "$out/get_metrics"
echo "tests/k8s-validate.sh: all deployment artefacts check out"
