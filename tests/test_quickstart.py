"""The README's first command on a fresh clone of the repository (the committed files only).

The installed environment stands in for the command's ``pip install -e ".[test]"``; the code
run is the clone's (it comes first on ``PYTHONPATH``). Slow: about a minute and a half on two
cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && '
                 ".venv/bin/python examples/quickstart.py")


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None
                    or shutil.which("cc") is None or shutil.which("make") is None,
                    reason="needs the git repository, make and cc")
def test_readme_first_command_on_a_fresh_clone(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0] == FIRST_COMMAND

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PYTHONPATH": str(clone)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "examples/quickstart.py", "--workdir",
                           str(tmp_path / "work")], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert "ref_exact True" in out
    equal, total = map(int, re.search(r"LUT-GEMVs: (\d+)/(\d+) results equal", out).groups())
    assert equal == total > 0
    sail, ort = map(float, re.search(r"sail c w4g128 (\d+) tokens/s, onnxruntime fp32 (\d+) "
                                     r"tokens/s", out).groups())
    assert sail > 0 and ort > 0
    assert "| speedup vs N1 |" in out and "| 16 |" in out
    assert seconds < 600, f"the quickstart took {seconds:.0f} s"  # ~90 s unloaded; shared cores
