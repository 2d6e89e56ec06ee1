#!/usr/bin/env bash
# `kvbm-ctl metrics` output passes `promtool check metrics` (HELP and TYPE on every family,
# counters named *_total, valid samples), on a segment with activity: the quickstart example
# registered blocks and matched them. Skipped (exit 77) when promtool is not installed
# (Debian package prometheus).
# usage: promtool_test.sh KVBM_CTL QUICKSTART
set -euo pipefail
ctl="$1" quickstart="$2"
command -v promtool >/dev/null || { echo "promtool not installed: skipped"; exit 77; }
seg="kvbm-promtool-test-$$"
trap 'rm -f "/dev/shm/$seg"' EXIT
"$quickstart" "$seg" >/dev/null
"$quickstart" "$seg" >/dev/null   # the second run matches what the first registered
out="$("$ctl" metrics "$seg")"
echo "$out" | grep -q '^# HELP kvbm_prefix_cache_hits_total ' || { echo "no HELP line"; exit 1; }
# 6 blocks of 16 tokens asked for twice, found once.
echo "$out" | grep -qx "kvbm_prefix_cache_queries_total{pool=\"$seg\"} 192" ||
  { echo "$out"; echo "unexpected kvbm_prefix_cache_queries_total"; exit 1; }
echo "$out" | grep -qx "kvbm_prefix_cache_hits_total{pool=\"$seg\"} 96" ||
  { echo "$out"; echo "unexpected kvbm_prefix_cache_hits_total"; exit 1; }
echo "$out" | promtool check metrics
echo "promtool check metrics: ok"
