"""The web app's JavaScript unit tests (web/test/*.test.js), run with node's own test runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "web"


def test_the_web_apps_javascript_unit_tests_pass() -> None:
    node = shutil.which("node")
    assert node, "node is missing: the web app needs Node.js 18+ (scripts/test checks for it)"
    tests = sorted(str(p) for p in (WEB / "test").glob("*.test.js"))
    assert tests, "no JavaScript tests found"
    run = subprocess.run([node, "--test", *tests], cwd=WEB, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
