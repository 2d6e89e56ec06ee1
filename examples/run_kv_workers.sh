#!/usr/bin/env bash
# Test of examples/kv_worker: three workers on one segment with a payload; each must verify every
# matched block's bytes, and together they must reuse each other's blocks.
set -euo pipefail
ctl="$1"; worker="$2"; seg="kvbm-example-kv-$$"
trap '"$ctl" destroy "$seg" --force >/dev/null 2>&1 || true' EXIT
"$ctl" create "$seg" --blocks 2048 --bytes-per-block 256 >/dev/null
out="$(mktemp)"
for w in 0 1 2; do "$worker" "$seg" "$w" 200 >>"$out" & done
wait
cat "$out"
[ "$(grep -c 'bad_bytes=0' "$out")" -eq 3 ] || { echo "a worker saw wrong bytes"; exit 1; }
cross=0; for v in $(grep -o 'cross_process=[0-9]*' "$out" | cut -d= -f2); do cross=$((cross + v)); done
[ "$cross" -gt 0 ] || { echo "no block was reused across processes"; exit 1; }
"$ctl" verify "$seg"
