# SPDX-License-Identifier: Apache-2.0
"""The Python examples run as users run them."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"


def test_shared_prefix_example(name) -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "shared_prefix.py"), name],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "prefill: 0 blocks cached, 6 computed" in out.stdout
    assert "second request: 4 of 6 blocks found in the cache" in out.stdout
    assert "shared KV bytes verified" in out.stdout
    assert not os.path.exists(f"/dev/shm/{name}")  # the example destroys its segment


def test_quickstart_example(name) -> None:
    """The README's Python example: a second run finds every block the first one computed."""
    import kvbm

    runs = []
    try:
        for _ in range(2):
            out = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), name],
                                 capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ))
            assert out.returncode == 0, out.stderr
            runs.append(out.stdout.strip())
    finally:
        try:
            kvbm.destroy(name)
        except kvbm.NotFoundError:
            pass
    assert runs == ["6 blocks: 0 cached, 6 computed", "6 blocks: 6 cached, 0 computed"]
