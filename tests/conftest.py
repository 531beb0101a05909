import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The suite tests the checkout it is in, whichever composer is installed (an editable
# install of another checkout, a pip-installed release): this process imports it and
# every `python -m composer` the tests start runs it.
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tools")]  # tools: the test product, a test fixture
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
BUILD = Path(os.environ.get("COMPOSER_TEST_BUILD", ROOT / "build"))


def composer(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "composer", *args], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"composer {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def python_for_user(
    probe: Callable[[str, dict[str, str]], subprocess.CompletedProcess[str]], site: Path, env: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """An interpreter an ordinary user can run composer with, and its environment (env plus
    PYTHONPATH): this one if `probe(python, env)` succeeds, else Debian's python3 with the
    pure-Python packages it lacks copied from this interpreter into `site` (this one may
    live where the user cannot read, e.g. pyenv under /root)."""
    env = {**env, "PYTHONPATH": f"{ROOT / 'src'}:{site}", "PYTHONDONTWRITEBYTECODE": "1"}
    result = None
    for python in (sys.executable, "/usr/bin/python3"):
        for _ in range(16):
            result = probe(python, env)
            if result.returncode == 0:
                return python, env
            missing = re.search(r"No module named '([\w.]+)'", result.stderr)
            if not missing or missing.group(1).startswith("composer"):
                break
            try:
                mod = importlib.import_module(missing.group(1).split(".")[0])
            except ImportError:
                break
            src = Path(mod.__file__ or "")
            if src.name == "__init__.py":
                shutil.copytree(
                    src.parent, site / src.parent.name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
                )
            else:
                shutil.copy(src, site / src.name)
    raise AssertionError(f"no Python the user can run composer with: {result.stderr[-1000:] if result else ''}")


@pytest.fixture(scope="session")
def testproduct_repo() -> Path:
    from testproduct import build_testproduct

    return build_testproduct(BUILD / "testproduct")


def _current_demo(repo: Path) -> Path | None:
    """`make demo`'s runtime (BUILD/demo), if this checkout's code made it from the test
    product's repository as it is now: the same compose the slow tests would run."""
    from composer.cache import code_digest

    demo = BUILD / "demo"
    try:
        manifest = json.loads((demo / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    made = (demo / "manifest.json").stat().st_mtime
    if manifest.get("composer") != code_digest() or (repo / "repodata" / "repomd.xml").stat().st_mtime > made:
        return None
    return demo


@pytest.fixture(scope="session")
def runtime_outputs(testproduct_repo, tmp_path_factory) -> Path:
    """The test product's runtime composed as a user would, every default taken: work dir
    /var/tmp, cache /var/cache/composer (shared with `make demo`: a tree cache hit is an honest
    share, the key covers composer's code), xz, btrfs. Slow tests share it.

    `make demo` composes exactly this (its log is BUILD/demo.log): when this checkout's code
    made it from the repository as it is now, the tests inspect and boot it instead of
    composing it again.
    """
    out = _current_demo(testproduct_repo)
    if out is not None:
        log = BUILD / "demo.log"
    else:
        out = tmp_path_factory.mktemp("runtime") / "out"
        log = out.parent / "build.log"
        composer(
            "--logfile",
            str(log),
            "runtime",
            "--product",
            "TestProduct",
            "--version",
            "1",
            "--source",
            f"file://{testproduct_repo}",
            "--nogpgcheck",
            str(out),
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["rootfs_type"], manifest["compression"]) == ("btrfs", "xz"), manifest
    # Every build says where it worked, whether dnf ran or the tree came from the cache.
    text = log.read_text()
    works = re.findall(r"work directory (/var/tmp/composer-build\.[0-9a-f]+), cache /var/cache/composer$", text, re.M)
    assert works, "the build did not work under the default /var/tmp with the default cache"
    assert not any(Path(w).exists() for w in works), "the work directory was not cleaned up"
    return out


# boot.iso media for the slow tests: ext4 + osmin (the session runtime covers btrfs), lz4
# (the compressor barely matters to the checks and xz costs minutes), and a fixed
# SOURCE_DATE_EPOCH so that test_reproducible can compare a second build against it.
MEDIA_EPOCH = 1700000000


def compose_media(repo: Path, base: Path, *extra: str) -> Path:
    """`composer boot-iso` into base/out (work in base/work, log in base/build.log); returns base."""
    out, work = base / "out", base / "work"
    work.mkdir(parents=True)
    proc = composer(
        "--logfile",
        str(base / "build.log"),
        "boot-iso",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        f"file://{repo}",
        "--nogpgcheck",
        "--cachedir",
        str(BUILD / "cache"),
        "--rootfs-type",
        "ext4",
        "--osmin",
        "--compression",
        "lz4",
        "--source-date-epoch",
        str(MEDIA_EPOCH),
        "--workdir",
        str(work),
        *extra,
        str(out),
    )
    assert list(work.iterdir()) == [], "the work directory was not cleaned up"
    (base / "stderr.log").write_text(proc.stderr)
    return base


@pytest.fixture(scope="session")
def bootiso_build(testproduct_repo, tmp_path_factory) -> Path:
    return compose_media(testproduct_repo, tmp_path_factory.mktemp("bootiso"))
