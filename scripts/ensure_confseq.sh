#!/usr/bin/env bash
# The rollout analysis's statistics are checked against the `confseq` package. It has no
# wheel (a C++ extension): build it against Boost's headers, installed from Debian's
# packages when missing, with a pybind11 that knows this Python.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "import confseq.boundaries" 2>/dev/null && exit 0
echo "building confseq (the reference of the analysis's statistics tests; about a minute)"
if [[ ! -f /usr/include/boost/math/special_functions/beta.hpp ]]; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends libboost-dev >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends libboost-dev >/dev/null; }
fi
quiet_pip() {
  .venv/bin/pip "$@" 2> >(grep -v -e "is ignored: it is neither" -e "^$" >&2)
}
quiet_pip install -q "pybind11>=2.11" scikit-build cmake
quiet_pip install -q --no-build-isolation "confseq==0.0.11"
.venv/bin/python -c "import confseq.boundaries"
