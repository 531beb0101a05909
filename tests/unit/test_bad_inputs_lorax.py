"""The bad-input catalogue for `composer lorax`: logs it must not write through, and
--tmp/--workdir another user controls (issue 20's "writes follow symlinks" and "the lorax
entry point" classes). Cases as in test_bad_inputs: one line, exit 1, no traceback,
nothing left behind, and here also the target of every planted link untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_bad_inputs import Case, inputs, request_cleanup, run_case

__all__ = ["inputs", "request_cleanup"]  # fixtures the catalogue's run_case needs

LX = (
    "lorax",
    "-p",
    "TestProduct",
    "-v",
    "1",
    "-r",
    "1",
    "-s",
    "file://{i}/empty",
    "--tmp",
    "{t}/work",
    "--cachedir",
    "{t}/cache",
)
OUT = "{t}/out"
LINK = "composer never writes through a link"

CASES = [
    # --logfile: composer's refusals, the same for lorax's command line
    Case("lorax-logfile-dev-full", (*LX, "--logfile", "/dev/full", OUT), "--logfile /dev/full is inside the system"),
    Case("lorax-logfile-directory", (*LX, "--logfile", "{t}", OUT), "--logfile {t}: is a directory"),
    Case("lorax-logfile-proc", (*LX, "--logfile", "/proc/self/comm", OUT), "is inside the system directory /proc"),
    Case("lorax-logfile-sys", (*LX, "--logfile", "/sys/kernel/lorax.log", OUT), "is inside the system directory /sys"),
    Case("lorax-logfile-fifo", (*LX, "--logfile", "{i}/lorax/fifo", OUT), "--logfile {i}/lorax/fifo: is a FIFO"),
    Case(
        "lorax-logfile-symlink",
        (*LX, "--logfile", "{i}/lorax/loglink", OUT),
        f"--logfile {{i}}/lorax/loglink: is a symbolic link ({LINK})",
    ),
    Case(
        "lorax-logfile-dangling-symlink",
        (*LX, "--logfile", "{i}/lorax/dangling", OUT),
        f"--logfile {{i}}/lorax/dangling: is a symbolic link ({LINK})",
    ),
    # lorax's log directory: pkglists/ planted as a link to a directory elsewhere
    Case(
        "lorax-pkglists-symlink",
        (*LX, "--logfile", "{i}/lorax/logs/lorax.log", OUT),
        f"{{i}}/lorax/logs/pkglists is a link or not a directory (lorax writes pkglists/ there; {LINK})",
    ),
    Case(
        "lorax-pkglists-file",
        (*LX, "--logfile", "{i}/lorax/logs2/lorax.log", OUT),
        "{i}/lorax/logs2/pkglists is a link or not a directory",
    ),
    # --tmp and --workdir: a link into a directory another user controls, a shared directory
    Case(
        "lorax-tmp-link-to-another-users-dir",
        (*LX, "--tmp", "{i}/lorax/planted", OUT),
        "--tmp {i}/lorax/planted (leads to {i}/lorax/mallory): {i}/lorax/mallory belongs to nobody",
    ),
    Case(
        "lorax-workdir-in-another-users-dir",
        (*LX, "--workdir", "{i}/lorax/mallory/w", OUT),
        "{i}/lorax/mallory belongs to nobody",
    ),
    Case(
        "lorax-tmp-world-writable",
        (*LX, "--tmp", "{i}/lorax/shared/lorax", OUT),
        "--tmp {i}/lorax/shared/lorax: {i}/lorax/shared is writable by other users (and not sticky)",
    ),
]
NEEDS_ROOT = {"lorax-tmp-link-to-another-users-dir", "lorax-workdir-in-another-users-dir"}  # a directory of nobody's


@pytest.fixture(scope="module")
def lorax_inputs(inputs: Path) -> Path:
    d = inputs / "lorax"
    d.mkdir()
    os.mkfifo(d / "fifo")
    (d / "victim").write_text("root's file\n")
    (d / "loglink").symlink_to(d / "victim")
    (d / "dangling").symlink_to(d / "would-be-created")
    for logs in ("logs", "logs2"):
        (d / logs).mkdir()
        (d / logs / "lorax.log").write_text("")  # exists: opening it adds no name to the inputs
    (d / "elsewhere").mkdir()
    (d / "logs" / "pkglists").symlink_to(d / "elsewhere")
    (d / "logs2" / "pkglists").write_text("a file\n")
    (d / "mallory").mkdir()
    if os.geteuid() == 0:
        os.chown(d / "mallory", 65534, 65534)
    (d / "planted").symlink_to(d / "mallory")
    (d / "shared").mkdir()
    (d / "shared").chmod(0o777)
    return inputs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_lorax_input(case: Case, lorax_inputs: Path, tmp_path: Path, request_cleanup: list[Path]) -> None:
    if case.id in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip("needs root to make a directory of another user's")
    run_case(case, lorax_inputs, tmp_path, request_cleanup)
    d = lorax_inputs / "lorax"
    assert (d / "victim").read_text() == "root's file\n"
    assert not os.path.lexists(d / "would-be-created")
    assert list((d / "elsewhere").iterdir()) == [] and list((d / "mallory").iterdir()) == []
    assert (d / "logs" / "lorax.log").read_text() == ""
