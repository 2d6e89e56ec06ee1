#!/usr/bin/env bash
# Configures and builds kvbm into build/ (or $KVBM_BUILD_DIR). Extra arguments go to cmake.
# Prints one line per finished target; on failure prints the compiler output and exits non-zero.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVBM_BUILD_DIR:-$root/build}"
"$root/scripts/setup.sh"
mkdir -p "$build"
log="$build/build.log"
if ! cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
echo "building in $build ..."
if ! cmake --build "$build" -j"$(nproc)" >>"$log" 2>&1; then
  grep -E "error|Error" -A5 "$log" | head -60 >&2
  echo "build failed; full log: $log" >&2
  exit 1
fi
grep -oE "Built target [A-Za-z0-9_.-]+" "$log" | sed 's/^/  /' | sort -u
