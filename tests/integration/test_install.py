"""composer as a package, not a checkout: `pip install .` into a fresh venv, used from elsewhere."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    # Not editable: the package must carry its templates and dracut configuration itself.
    proc = subprocess.run(
        [str(env / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing may lead back to the checkout.
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(cwd)}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)


def test_installed_package_finds_its_data(venv, tmp_path):
    version = run(venv, tmp_path, "composer", "--version")
    assert version.returncode == 0 and version.stdout.startswith("composer "), version.stderr
    check = run(venv, tmp_path, "composer", "template-check")
    assert check.returncode == 0, check.stderr
    assert "ok:" in check.stdout and "testproduct/runtime-install.tmpl" in check.stdout
    where = run(
        venv,
        tmp_path,
        "python",
        "-c",
        "import composer.run as r; print(r.DATADIR); "
        "print(sorted(p.name for p in (r.DATADIR / 'share' / 'dracut').glob('*.conf')))",
    )
    assert where.returncode == 0, where.stderr
    datadir, confs = where.stdout.splitlines()
    assert datadir.startswith(str(venv)) and not datadir.startswith(str(ROOT)), datadir
    assert "90-composer.conf" in confs
    # The product is found by name from anywhere (what `composer runtime -p TestProduct` does first).
    prod = run(
        venv,
        tmp_path,
        "python",
        "-c",
        "from pathlib import Path; from composer.config import Config; from composer.product import template_dir; "
        "print(template_dir(Config('TestProduct', '1', Path('o'))))",
    )
    assert prod.returncode == 0 and prod.stdout.strip().startswith(str(venv)), prod.stderr
