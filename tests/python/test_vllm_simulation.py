# SPDX-License-Identifier: Apache-2.0
"""examples/python/vllm_shared_tier.py, run as a user would: engine processes sharing one tier
against private tiers, every loaded byte verified, engines SIGKILLed mid-load and mid-store."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import kvbm

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIM = ROOT / "examples" / "python" / "vllm_shared_tier.py"


def test_the_shared_tier_simulation_passes_its_checks_and_beats_private_tiers():
    env = dict(os.environ)
    env.setdefault("KVBM_BUILD_DIR", str(pathlib.Path(kvbm.__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, str(SIM), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    rates = [float(r) for r in re.findall(r"hit rate\s+([0-9.]+)%", out)]
    assert len(rates) == 2, out
    shared, private = rates
    assert shared > private, out
    assert out.count(" 0 wrong") == 2, out
    assert "kvbm-ctl verify clean" in out, out
    assert "no block left held" in out and "all checks passed" in out, out
    # Every tier it made is gone.
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"kvbm-sim-{proc.pid}-")], out


def test_the_simulation_explains_itself():
    res = subprocess.run(
        [sys.executable, str(SIM), "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    assert "--quick" in res.stdout and "--engines" in res.stdout
    bad = subprocess.run(
        [sys.executable, str(SIM), "--engines", "2"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "at least 3" in bad.stderr
