#!/usr/bin/env bash
# `kvbm-ctl metrics` output passes `promtool check metrics` (HELP and TYPE on every family,
# counters named *_total, valid samples). Skipped (exit 77) when promtool is not installed
# (Debian package prometheus). The values themselves are tested in tests/integration/metrics_test.
# usage: promtool_test.sh KVBM_CTL
set -euo pipefail
ctl="$1"
command -v promtool >/dev/null || { echo "promtool not installed: skipped"; exit 77; }
seg="kvbm-promtool-test-$$"
trap 'rm -f "/dev/shm/$seg"' EXIT
"$ctl" create "$seg" --blocks 64 >/dev/null
out="$("$ctl" metrics "$seg")"
echo "$out" | grep -q '^# HELP kvbm_prefix_cache_hits_total ' || { echo "no HELP line"; exit 1; }
echo "$out" | grep -qx "kvbm_capacity_blocks{pool=\"$seg\"} 64" ||
  { echo "$out"; echo "unexpected kvbm_capacity_blocks"; exit 1; }
echo "$out" | promtool check metrics
echo "promtool check metrics: ok"
