#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Operating a segment (the README's kvbm-ctl example): create it, let a worker use it, look at
# it, scrape its metrics, check it, remove it.   usage: operate.sh [SEGMENT]   (kvbm-ctl and the
# quickstart example on PATH, or KVBM_CTL / QUICKSTART naming them)
set -euo pipefail
ctl="${KVBM_CTL:-kvbm-ctl}" worker="${QUICKSTART:-quickstart}" seg="${1:-kv-demo}"

"$ctl" create "$seg" --blocks 4096 --block-size 16  # the workers' config must match
"$worker" "$seg"                                    # a worker registers 6 blocks, exits
"$ctl" info "$seg"                                  # config, blocks by state, processes
"$ctl" top "$seg" --once                            # pools, hit rate, processes (live without --once)
"$ctl" metrics "$seg" | grep prefix_cache           # Prometheus text, label pool="$seg"
"$ctl" dump "$seg" --state inactive --limit 3       # a few cached blocks
"$ctl" verify "$seg" --json                         # {"ok": true, "problems": []}
"$ctl" destroy "$seg"
