import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("COMPOSER_TEST_BUILD", ROOT / "build"))


def composer(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "composer", *args], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"composer {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def testproduct_repo() -> Path:
    from composer.testproduct import build_testproduct

    return build_testproduct(BUILD / "testproduct")
