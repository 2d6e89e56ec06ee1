#!/usr/bin/env bash
# The main job of kvbm, end to end: four worker processes share one KV cache in shared memory
# (prefixes computed by one are reused by the others, bytes included), one worker is SIGKILLed
# while holding blocks, and kvbm-ctl shows the damage, repairs it and shows the recovered state.
# Exit 0 only if every check passed. Cleans up its segment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVBM_BUILD_DIR:-$root/build}"
seg="kvbm-demo-$$"
ctl="$build/tools/kvbm-ctl"
worker="$build/examples/kv_worker"
tmp="$(mktemp -d)"
failures=0

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
check() {  # check "description" command...
  local what="$1"; shift
  if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; failures=$((failures + 1)); fi
}
cleanup() {
  jobs -p | xargs -r kill -9 2>/dev/null || true
  "$ctl" destroy "$seg" --force >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

step "build (packages are installed if missing)"
"$root/scripts/build.sh" -DKVBM_BUILD_TESTS=OFF
echo "  built kvbm-ctl and the example workers"

step "create a segment with a payload region: 4096 blocks x 16 tokens, 4 KiB of KV bytes each"
"$ctl" create "$seg" --blocks 4096 --block-size 16 --bytes-per-block 4096 --eviction lru

step "start 4 workers on the same cache; worker 3 will be killed while holding blocks"
for w in 0 1 2; do
  "$worker" "$seg" "$w" 400 >"$tmp/worker$w.out" 2>&1 &
  echo $! >"$tmp/worker$w.pid"
done
mkfifo "$tmp/victim.fifo"
"$worker" "$seg" 3 150 --hold >"$tmp/victim.fifo" 2>&1 &
victim=$!
exec 3<"$tmp/victim.fifo"
victim_summary=""
while IFS= read -r line <&3; do
  case "$line" in
    worker=*) victim_summary="$line" ;;
    holding*) echo "  worker 3 (pid $victim): $line"; break ;;
  esac
done
kill -9 "$victim"
wait "$victim" 2>/dev/null || true
echo "  worker 3 SIGKILLed"

step "kvbm-ctl processes: the killed worker's entry is DEAD and still holds blocks"
"$ctl" processes "$seg" | tee "$tmp/procs.txt"
check "processes shows a DEAD entry" grep -q DEAD "$tmp/procs.txt"

for w in 0 1 2; do wait "$(cat "$tmp/worker$w.pid")"; done
step "the surviving workers finished"
cat "$tmp"/worker[012].out | sed 's/^/  /'
echo "  $victim_summary (killed)"

step "kvbm-ctl verify: reports the dead worker's references (exit 1)"
set +e; "$ctl" verify "$seg"; rc=$?; set -e
check "verify exits 1 while the dead worker's blocks are held" test "$rc" -eq 1

step "kvbm-ctl repair: releases them"
start=$(date +%s%N)
"$ctl" repair "$seg"
reclaim_ms=$(( ($(date +%s%N) - start) / 1000000 ))

step "kvbm-ctl verify: consistent again"
check "verify passes after repair" "$ctl" verify "$seg"

step "kvbm-ctl info"
"$ctl" info "$seg"
"$ctl" info "$seg" --json >"$tmp/info.json"

step "summary"
total() { local sum=0 v; for v in $(grep -ho "$1=[0-9]*" "$tmp"/worker[012].out | cut -d= -f2); do sum=$((sum + v)); done; echo "$sum"; }
requests=$(total requests); matched=$(total matched); computed=$(total computed)
cross=$(total cross_process); bytes=$(total bytes_verified); bad=$(total bad_bytes)
permille=$((1000 * matched / (matched + computed)))
hit_rate="$((permille / 10)).$((permille % 10))"
echo "  requests served        $requests (by 3 surviving workers; worker 3 was killed)"
echo "  prefix hit rate        $hit_rate % of blocks came from the shared cache"
echo "  reused across workers  $cross blocks computed by another process"
echo "  KV bytes verified      $bytes bytes matched exactly what their tokens imply"
echo "  time to reclaim        $reclaim_ms ms (kvbm-ctl repair, including process start)"
check "every matched block carried the right bytes" test "$bad" -eq 0
check "workers reused each other's blocks" test "$cross" -gt 0
for state in mutable staged primary duplicate; do
  check "no $state block is left after all workers are gone" grep -q "\"$state\": 0" "$tmp/info.json"
done
for w in 0 1 2; do
  check "worker $w exited cleanly" grep -q "bad_bytes=0" "$tmp/worker$w.out"
done

step "vLLM engines sharing one CPU KV tier (kvbm.vllm, examples/python/vllm_shared_tier.py --quick)"
if [ -f "$build/python/kvbm/vllm/__init__.py" ]; then
  set +e
  PYTHONPATH="$build/python" /usr/bin/python3 "$root/examples/python/vllm_shared_tier.py" \
    --quick --ctl "$ctl" >"$tmp/sim.txt" 2>&1
  set -e
  sed 's/^/  /' "$tmp/sim.txt"
  check "the simulation verified every loaded byte and survived the kills" \
    grep -q "all checks passed" "$tmp/sim.txt"
  echo "  $(grep -m1 'shared tier (' "$tmp/sim.txt" | sed 's/^ *//')"
else
  echo "  skipped: the Python package was not built (needs python3-dev and pybind11-dev)"
fi

if [ "$failures" -ne 0 ]; then
  echo; echo "demo: $failures check(s) failed"; exit 1
fi
echo; echo "demo: all checks passed"
