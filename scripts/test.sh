#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs every test. Exit code = test result.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVBM_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" -DKVBM_BUILD_TESTS=ON
cd "$build"
ctest --output-on-failure -j"$(nproc)" --timeout 300
