#!/usr/bin/env python3
"""kvbm-ctl serve-metrics, scraped over loopback as Prometheus would.

Starts the server on 127.0.0.1 port 0 (a free port; the server prints its URL), scrapes
/metrics with an HTTP client (timeouts everywhere), checks the series of the named segment and
runs `promtool check metrics` on the scraped text when promtool is installed; the same without
names (every kvbm segment); a segment destroyed between scrapes drops out; SIGTERM and SIGINT
stop it with exit 0; a port in use is a clear error with exit code 1.

The sample scrape config docs/monitoring/prometheus.yml passes `promtool check config`, and
every kvbm_* name the Grafana dashboard docs/monitoring/grafana-dashboard.json queries is served.

usage: serve_metrics_test.py KVBM_CTL QUICKSTART SOURCE_DIR
"""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import urllib.request

CTL, QUICKSTART, SOURCE = sys.argv[1], sys.argv[2], sys.argv[3]
TIMEOUT = 10
PID = os.getpid()
SEGS = [f"kvbm-serve-test-{PID}-a", f"kvbm-serve-test-{PID}-b"]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def ctl(*args):
    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=TIMEOUT)


def start(*args):
    """Starts serve-metrics; returns (process, url) once it printed where it listens."""
    p = subprocess.Popen([CTL, "serve-metrics", *args, "--listen", "127.0.0.1:0", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
    if not ready:
        p.kill()
        raise SystemExit("serve-metrics printed nothing within the timeout")
    line = p.stdout.readline()
    url = json.loads(line)["url"]
    check(re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*/metrics", url) is not None,
          f"url {url!r}")
    return p, url


def scrape(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
        check(r.status == 200, f"status {r.status}")
        return r.read().decode()


def stop(p, sig):
    p.send_signal(sig)
    try:
        code = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        code = "timeout"
    check(code == 0, f"exit code after {sig.name}: {code} (stderr: {p.stderr.read()})")


def samples(text, metric):
    return dict(re.findall(rf'^{metric}{{pool="([^"]+)"}} (\S+)$', text, re.M))


try:
    for s in SEGS:
        subprocess.run([QUICKSTART, s], check=True, capture_output=True, timeout=TIMEOUT)

    # Named segments.
    p, url = start(SEGS[0])
    text = scrape(url)
    check("# HELP kvbm_prefix_cache_hits_total " in text, "HELP line")
    check("# TYPE kvbm_capacity_blocks gauge" in text, "TYPE line")
    check(samples(text, "kvbm_capacity_blocks") == {SEGS[0]: "4096"},
          f"capacity series: {samples(text, 'kvbm_capacity_blocks')}")
    check(samples(text, "kvbm_registrations_total") == {SEGS[0]: "6"},
          f"registrations: {samples(text, 'kvbm_registrations_total')}")
    # Read at scrape time: a lookup between two scrapes shows in the second.
    subprocess.run([QUICKSTART, SEGS[0]], check=True, capture_output=True, timeout=TIMEOUT)
    text = scrape(url)
    check(samples(text, "kvbm_prefix_cache_hits_total") == {SEGS[0]: "96"},
          f"hits after a second lookup: {samples(text, 'kvbm_prefix_cache_hits_total')}")
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=TIMEOUT)
        check(r.returncode == 0, f"promtool check metrics: {r.stdout}{r.stderr}")
        config = os.path.join(SOURCE, "docs", "monitoring", "prometheus.yml")
        r = subprocess.run(["promtool", "check", "config", config], capture_output=True,
                           text=True, timeout=TIMEOUT)
        check(r.returncode == 0, f"promtool check config: {r.stdout}{r.stderr}")
    else:
        print("promtool not installed: lint skipped")
    with open(os.path.join(SOURCE, "docs", "monitoring", "grafana-dashboard.json")) as f:
        queried = set(re.findall(r"kvbm_[a-z_]+", f.read()))
    served = set(re.findall(r"^# TYPE (kvbm_[a-z_]+) ", text, re.M))
    check(queried and queried <= served, f"dashboard names not served: {sorted(queried - served)}")

    # A port in use: a clear error and exit 1, at once.
    port = int(url.split(":")[2].split("/")[0])
    r = subprocess.run([CTL, "serve-metrics", SEGS[0], "--listen", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    check(r.returncode == 1, f"port in use: exit {r.returncode}")
    check(f"cannot listen on 127.0.0.1:{port}" in r.stderr, f"port in use: {r.stderr!r}")
    stop(p, signal.SIGTERM)

    # No names: every kvbm segment on the host; a destroyed one drops out of the next scrape.
    p, url = start()
    got = samples(scrape(url), "kvbm_capacity_blocks")
    check(all(s in got for s in SEGS), f"segments found without names: {sorted(got)}")
    check(ctl("destroy", SEGS[1]).returncode == 0, "destroy")
    got = samples(scrape(url), "kvbm_capacity_blocks")
    check(SEGS[0] in got and SEGS[1] not in got, f"after destroy: {sorted(got)}")
    stop(p, signal.SIGINT)

    # A named segment that does not exist: exit 3 before listening.
    r = ctl("serve-metrics", f"kvbm-serve-test-{PID}-missing", "--listen", "127.0.0.1:0")
    check(r.returncode == 3, f"missing segment: exit {r.returncode}")
finally:
    for s in SEGS:
        for suffix in ("", ".payload"):
            try:
                os.unlink(f"/dev/shm/{s}{suffix}")
            except FileNotFoundError:
                pass

print("serve-metrics test:", "FAILED" if failures else "passed")
sys.exit(1 if failures else 0)
