#!/usr/bin/env bash
# Installs the build tree into a temporary prefix, then uses it as a newcomer would:
#   1. the installed files are where the documentation says;
#   2. the installed kvbm-ctl prints the version and works on a segment;
#   3. examples/quickstart.cpp builds with find_package(kvbm CONFIG) and runs;
#   4. the same file builds with `pkg-config --cflags --libs kvbm` and runs, finding the blocks
#      the first program registered (the two share the segment);
#   5. a parent project's add_subdirectory(kvbm) leaves its CMAKE_BUILD_TYPE alone.
# usage: install_test.sh SOURCE_DIR BUILD_DIR CXX_COMPILER VERSION
set -euo pipefail
src="$1" build="$2" cxx="$3" version="$4"

work="$(mktemp -d "${TMPDIR:-/tmp}/kvbm-install-test.XXXXXX")"
seg="kvbm-install-test-$$"
cleanup() {
  rm -f "/dev/shm/$seg" "/dev/shm/$seg.payload"
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
prefix="$work/prefix"

echo "== cmake --install into $prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "cmake --install"; }
libdir="$(cd "$prefix" && ls -d lib*/cmake/kvbm | sed 's#/cmake/kvbm##')"
for f in include/kvbm/kvbm.hpp include/kvbm/version.hpp "$libdir/cmake/kvbm/kvbmConfig.cmake" \
         "$libdir/cmake/kvbm/kvbmConfigVersion.cmake" "$libdir/pkgconfig/kvbm.pc" bin/kvbm-ctl \
         share/doc/kvbm/LICENSE; do
  [ -e "$prefix/$f" ] || fail "$f is not installed"
done
ls "$prefix/$libdir"/libkvbm.* >/dev/null 2>&1 || fail "no libkvbm in $prefix/$libdir"
# Nothing from src/ (internal headers) and no test library is installed.
if find "$prefix/include" -name '*.hpp' | xargs grep -l '#include "\(shm\|segment\|store\)/' ; then
  fail "an installed header includes an internal one"
fi
find "$prefix" -name 'libkvbm_fault*' -o -name 'libkvbm_testing*' | grep . && fail "test library installed"

echo "== installed kvbm-ctl"
out="$("$prefix/bin/kvbm-ctl" --version)"
[ "$out" = "kvbm-ctl $version" ] || fail "kvbm-ctl --version printed '$out', expected 'kvbm-ctl $version'"
grep -q "^#define KVBM_VERSION_STRING \"$version\"" "$prefix/include/kvbm/version.hpp" ||
  fail "version.hpp does not say $version"

echo "== find_package(kvbm CONFIG)"
cmake -S "$src/tests/install/consumer" -B "$work/consumer" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_PREFIX_PATH="$prefix" -DKVBM_EXAMPLE_SOURCE="$src/examples/quickstart.cpp" \
  >"$work/consumer.log" 2>&1 || { cat "$work/consumer.log"; fail "configure with find_package"; }
cmake --build "$work/consumer" >>"$work/consumer.log" 2>&1 ||
  { cat "$work/consumer.log"; fail "build with find_package"; }
out="$("$work/consumer/quickstart" "$seg")"
echo "$out"
[ "$out" = "6 blocks: 0 cached, 6 computed" ] || fail "first quickstart run printed '$out'"

echo "== pkg-config --cflags --libs kvbm"
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
[ "$(pkg-config --modversion kvbm)" = "$version" ] || fail "pkg-config --modversion kvbm"
# shellcheck disable=SC2046
"$cxx" -std=c++20 -o "$work/quickstart-pc" "$src/examples/quickstart.cpp" \
  $(pkg-config --cflags --libs kvbm) || fail "build with pkg-config"
out="$("$work/quickstart-pc" "$seg")"
echo "$out"
[ "$out" = "6 blocks: 6 cached, 0 computed" ] || fail "second quickstart run printed '$out'"

"$prefix/bin/kvbm-ctl" verify "$seg" >/dev/null || fail "kvbm-ctl verify after the two runs"
"$prefix/bin/kvbm-ctl" destroy "$seg" >/dev/null || fail "kvbm-ctl destroy"

echo "== add_subdirectory(kvbm) in a parent without a build type"
env -u CMAKE_BUILD_TYPE cmake -S "$src/tests/install/parent" -B "$work/parent" -DCMAKE_CXX_COMPILER="$cxx" \
  -DKVBM_SOURCE_DIR="$src" >"$work/parent.log" 2>&1 ||
  { cat "$work/parent.log"; fail "configure the parent project"; }
grep -q '^CMAKE_BUILD_TYPE:STRING=$' "$work/parent/CMakeCache.txt" ||
  fail "the parent's cached CMAKE_BUILD_TYPE changed: $(grep '^CMAKE_BUILD_TYPE' "$work/parent/CMakeCache.txt")"
echo "install test passed"
