#!/usr/bin/env bash
# The whole test suite. Installs what the integration tests need when it is missing
# (Debian packages, as root), then runs clippy, unit and integration tests and a smoke
# run of the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing ${need[*]}; run as root to install them with apt-get" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Azurite, the Azure Blob Storage emulator the shared backend's tests run against
# (storage/src/backend/azurite.rs), from npm into target/azurite when missing.
install_azurite() {
  [ -x target/azurite/node_modules/.bin/azurite-blob ] && return
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "tests/run.sh: missing npm; run as root to install it with apt-get" >&2
      exit 1
    fi
    echo "tests/run.sh: installing npm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  echo "tests/run.sh: installing azurite" >&2
  mkdir -p target/azurite
  npm install --prefix target/azurite --no-audit --no-fund --loglevel error azurite@3
}
install_azurite

# moto's server mode, the S3 emulator the shared backend's tests also run against
# (testkit/src/moto.rs), from pip into the venv target/moto when missing.
moto_version=5.2.6
install_moto() {
  target/moto/bin/python -c "import importlib.metadata as m, moto.server; \
    assert m.version('moto') == '$moto_version'" 2>/dev/null && return
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "tests/run.sh: missing python3-venv; run as root to install it with apt-get" >&2
      exit 1
    fi
    echo "tests/run.sh: installing python3-venv" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
  fi
  echo "tests/run.sh: installing moto $moto_version" >&2
  rm -rf target/moto
  python3 -m venv target/moto
  target/moto/bin/pip install --quiet --disable-pip-version-check "moto[server]==$moto_version"
}
install_moto

cargo fmt --all -- --check
# Every crate and target (tests, benches) with the lints of Cargo.toml; a warning fails.
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets -- --test-threads "${FERRY_TEST_THREADS:-2}"
# The benchmark (benches/compare.rs) at tiny sizes, once, so that it cannot rot.
FERRY_BENCH_SCALE=tiny FERRY_BENCH_REPS=1 cargo bench --bench compare
# The container image's binary, the Kubernetes manifests and the Grafana dashboard,
# checked offline.
tests/k8s-validate.sh
