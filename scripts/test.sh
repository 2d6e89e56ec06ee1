#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs every test (C++, then the Python
# package's pytest suite); then rebuilds kvbm-ctl and its tests under AddressSanitizer + UBSan
# and runs those (damaged and fuzzed segment images).
# Exit code = test result. KVBM_SKIP_ASAN=1 skips the sanitizer stage.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVBM_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" -DKVBM_BUILD_TESTS=ON
echo "running the test suite ..."
# The Python suite is also a CTest test (label python); it runs below, after the C++ tests.
(cd "$build" && ctest --output-on-failure -j"$(nproc)" --timeout 300 -LE python)

if [ -f "$build/python/kvbm/__init__.py" ]; then
  echo "running the Python test suite (tests/python) ..."
  (cd "$root" && PYTHONPATH="$build/python" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
    tests/python)
else
  echo "the Python package was not built (pybind11-dev / python3-dev missing?)" >&2
  exit 1
fi

if [ "${KVBM_SKIP_ASAN:-0}" != "1" ]; then
  asan="${build}-asan"
  echo "building kvbm-ctl and its tests with AddressSanitizer + UBSan in $asan ..."
  cmake -S "$root" -B "$asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVBM_BUILD_TESTS=ON \
    -DKVBM_SANITIZE="address;undefined" >"$asan.log" 2>&1 || { cat "$asan.log"; exit 1; }
  cmake --build "$asan" -j"$(nproc)" --target kvbm-ctl kvbm_ctl_tests quickstart >>"$asan.log" 2>&1 ||
    { grep -E "error" -A5 "$asan.log" | head -60; exit 1; }
  echo "running the kvbm-ctl tests under the sanitizers ..."
  # A sanitizer report exits 200/201: never one of kvbm-ctl's codes, so every test notices.
  (cd "$asan" && ASAN_OPTIONS=exitcode=200:detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:exitcode=201 ctest --output-on-failure -j"$(nproc)" \
    --timeout 600 -L ctl)
fi
