#!/usr/bin/env python3
"""kvbm-ctl top: --once prints one frame and exits; the live view prints a frame per interval
(rates from the second frame on) and stops with exit 0 on SIGTERM. Frames read through --json.
Also: the progress lines of a long verify go to stderr, never into its JSON on stdout.

usage: top_test.py KVBM_CTL QUICKSTART
"""
import json
import os
import select
import signal
import subprocess
import sys

CTL, QUICKSTART = sys.argv[1], sys.argv[2]
TIMEOUT = 10
SEG = f"kvbm-top-test-{os.getpid()}"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


try:
    for _ in range(2):  # the second run finds the first run's 6 blocks
        subprocess.run([QUICKSTART, SEG], check=True, capture_output=True, timeout=TIMEOUT)

    r = subprocess.run([CTL, "top", SEG, "--once"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    check(r.returncode == 0, f"top --once exit {r.returncode}: {r.stderr}")
    check(SEG in r.stdout and "pools" in r.stdout, f"top --once frame: {r.stdout!r}")
    check("hit rate 50.0%" in r.stdout, f"hit rate (6 of 12 blocks found): {r.stdout!r}")
    check("\x1b[" not in r.stdout, "no terminal escapes when stdout is not a terminal")

    r = subprocess.run([CTL, "top", SEG, "--once", "--json"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    check(r.returncode == 0, f"top --once --json exit {r.returncode}")
    frame = json.loads(r.stdout)
    check(frame["name"] == SEG and frame["block_count"] == 4096, f"frame: {frame}")
    check(frame["counts"]["inactive"] == 6, f"counts: {frame['counts']}")
    check(frame["prefix_cache_hit_rate"] == 0.5, f"hit rate: {frame['prefix_cache_hit_rate']}")
    check(frame["rates_per_second"]["allocations"] is None, "no rates in a single frame")
    check(frame["processes"] == [], "no process attached")

    # Live: a frame every 50 ms, with rates from the second one on; SIGTERM stops it.
    p = subprocess.Popen([CTL, "top", SEG, "--interval", "0.05", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frames = []
    while len(frames) < 3:
        ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
        if not ready:
            break
        frames.append(json.loads(p.stdout.readline()))
    check(len(frames) == 3, f"live frames: {len(frames)}")
    check(all(f["rates_per_second"]["allocations"] is not None for f in frames[1:]),
          "rates from the second frame on")
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        code = "timeout"
    check(code == 0, f"exit after SIGTERM: {code}")

    r = subprocess.run([CTL, "top", SEG + "-missing", "--once"], capture_output=True,
                       timeout=TIMEOUT)
    check(r.returncode == 3, f"missing segment: exit {r.returncode}")
    # Progress of a long verify goes to stderr only (forced at once here): stdout stays JSON.
    env = dict(os.environ, KVBM_CTL_PROGRESS_AFTER_MS="0")
    r = subprocess.run([CTL, "verify", SEG, "--json"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    check(r.returncode == 0 and json.loads(r.stdout)["ok"] is True, f"verify --json: {r.stdout!r}")
    check(f"verify {SEG}: still working" in r.stderr, f"progress line: {r.stderr!r}")
    r = subprocess.run([CTL, "verify", SEG, "--json"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    check(r.stderr == "", f"a quick verify prints no progress: {r.stderr!r}")
finally:
    try:
        os.unlink(f"/dev/shm/{SEG}")
    except FileNotFoundError:
        pass

print("top test:", "FAILED" if failures else "passed")
sys.exit(1 if failures else 0)
