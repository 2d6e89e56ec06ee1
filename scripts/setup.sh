#!/usr/bin/env bash
# Installs the Debian 12 packages kvbm needs (DESIGN.md section 1), only those missing.
# Idempotent and quiet when nothing is missing. Needs root (or sudo) only when installing.
# Arguments name extra packages one script alone needs (scripts/bench.sh: valgrind).
set -euo pipefail

PACKAGES=(
  g++ cmake make
  libboost-dev libfmt-dev libcli11-dev catch2 libxxhash-dev
  nlohmann-json3-dev libexpected-dev libbenchmark-dev
  pybind11-dev python3-dev python3-pytest python3-numpy            # Python package (section 9)
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev python3-zmq python3-msgpack   # KV events (section 10)
  prometheus-cpp-dev prometheus                                    # metrics endpoint, promtool
  pkg-config                                                       # tests of the installed kvbm.pc
  "$@"
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
