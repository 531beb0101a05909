"""composer.userns: reading /etc/subuid, the unshare maps, the one-line errors."""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from composer import userns
from composer.userns import (
    MIN_IDS,
    SubidRange,
    command_words,
    disabled_error,
    free_start,
    missing_range_error,
    needs_namespace,
    parse_subid,
    unshare_argv,
    usable_range,
)

SRC = Path(__file__).resolve().parents[2] / "src"

SUBUID = """\
alice:100000:65536
1002:165536:65536
bob:231072:1000
bob:232072:65536
broken line
carol:x:65536
dave:300000:0
"""


def test_parse_subid_by_name_and_by_uid():
    assert parse_subid(SUBUID, "alice", 1001) == [SubidRange(100000, 65536)]
    # shadow accepts the uid instead of the name
    assert parse_subid(SUBUID, "erin", 1002) == [SubidRange(165536, 65536)]
    assert parse_subid(SUBUID, "bob", 1003) == [SubidRange(231072, 1000), SubidRange(232072, 65536)]
    # malformed lines and empty ranges are skipped, as newuidmap skips them
    assert parse_subid(SUBUID, "carol", 1004) == []
    assert parse_subid(SUBUID, "dave", 1005) == []
    assert parse_subid("", "alice", 1001) == []


def test_usable_range_needs_the_whole_package_id_space():
    assert usable_range(parse_subid(SUBUID, "bob", 1003)) == SubidRange(232072, 65536)
    assert usable_range([SubidRange(100000, 1000)]) is None
    assert usable_range([]) is None
    assert SubidRange(100000, 65536).end == 165535


def test_free_start_is_after_every_range():
    assert free_start("", "") == 100000
    assert free_start(SUBUID, "x:400000:10\n") == 400010
    assert free_start("a:5:10\n") == 100000


def test_unshare_maps_the_user_to_0_and_the_range_to_1_n():
    argv = unshare_argv(SubidRange(100000, 65536), SubidRange(200000, 70000))
    assert argv == ["unshare", "--user", "--map-root-user", "--map-users=100000,1,65536", "--map-groups=200000,1,70000"]


def test_missing_range_says_the_lines_to_add():
    msg = missing_range_error("alice", [], [], 165536)
    assert msg is not None and "\n" not in msg
    assert "add the line alice:165536:65536 to /etc/subuid and /etc/subgid" in msg
    assert "usermod --add-subuids 165536-231071 --add-subgids 165536-231071 alice" in msg
    # only the file that lacks one is named; a small range is said not to count
    msg = missing_range_error("bob", [SubidRange(100000, MIN_IDS)], [SubidRange(100000, 100)], 300000)
    assert msg is not None and "in /etc/subgid (ranges of fewer than 65536 ids do not count)" in msg
    assert "bob:300000:65536 to /etc/subgid " in msg
    assert missing_range_error("carol", [SubidRange(1, MIN_IDS)], [SubidRange(1, MIN_IDS)], 100000) is None


@pytest.mark.parametrize(
    "sysctls,fix",
    [
        ({"/proc/sys/kernel/unprivileged_userns_clone": "0\n"}, "kernel.unprivileged_userns_clone=1"),
        ({"/proc/sys/user/max_user_namespaces": "0\n"}, "user.max_user_namespaces=15000"),
        ({"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1\n"}, "kernel.apparmor_restrict_unprivileged_userns=0"),
    ],
)
def test_disabled_user_namespaces_name_the_sysctl(sysctls, fix):
    msg = disabled_error(sysctls)
    assert msg is not None and "\n" not in msg
    assert f"add {fix} to /etc/sysctl.d/90-composer.conf and run sysctl --system" in msg


def test_enabled_user_namespaces_are_no_error():
    assert disabled_error({}) is None
    assert (
        disabled_error(
            {
                "/proc/sys/kernel/unprivileged_userns_clone": "1\n",
                "/proc/sys/user/max_user_namespaces": "63000\n",
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "0\n",
            }
        )
        is None
    )


def test_which_commands_need_the_namespace():
    for words in (("runtime",), ("boot-iso",), ("netboot",), ("lorax",), ("overlay", "merge")):
        assert needs_namespace(words, ["x"]), words
    for words in (("verify",), ("template-check",), ("delta", "create"), ("sparsify",), ("overlay", "status"), ("mkksiso",)):
        assert not needs_namespace(words, ["x"]), words
    # lorax parses its options in the namespace: its help must not need one
    assert not needs_namespace(("lorax",), ["lorax", "--help"])


def test_command_words_from_the_parsed_command_line():
    from composer.cli import build_parser

    parser = build_parser()
    assert command_words(parser.parse_args(["sparsify", "x.img"])) == ("sparsify",)
    assert command_words(parser.parse_args(["overlay", "merge", "/m"])) == ("overlay", "merge")
    assert command_words(argparse.Namespace(command="runtime")) == ("runtime",)


def test_default_cachedir(monkeypatch, tmp_path):
    monkeypatch.delenv(userns.MARKER, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert userns.default_cachedir() == Path("/var/cache/composer")
    # in composer's own namespace: root there, but the user's cache
    monkeypatch.setenv(userns.MARKER, "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert userns.default_cachedir() == tmp_path / ".cache/composer"
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/c")
    assert userns.default_cachedir() == Path("/srv/c/composer")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec: ignored
    assert userns.default_cachedir() == tmp_path / ".cache/composer"
    monkeypatch.delenv(userns.MARKER)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert userns.default_cachedir() == tmp_path / ".cache/composer"


def test_root_never_enters_a_namespace(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root")

    def no_exec(*a):
        raise AssertionError("exec as root")

    monkeypatch.setattr(os, "execvp", no_exec)
    userns.enter_user_namespace(("runtime",), ["runtime"])


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line as `nobody` (no subordinate ids), with Debian's Python: the
    shared one lives under /root, which other users cannot read."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(SRC), "HOME": "/nonexistent"}
    gid = pwd.getpwnam("nobody").pw_gid
    return subprocess.run(
        ["setpriv", "--reuid=nobody", f"--regid={gid}", "--clear-groups", "/usr/bin/python3", "-m", "composer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
    )


def test_no_subordinate_ids_is_one_line_before_any_work(tmp_path):
    """A real ordinary user without a range in /etc/subuid: one line saying what to add, exit 1."""
    if os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or shutil.which("setpriv") is None:
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    nobody = pwd.getpwnam("nobody")
    if usable_range(
        parse_subid(Path("/etc/subuid").read_text() if Path("/etc/subuid").exists() else "", "nobody", nobody.pw_uid)
    ):
        pytest.skip("nobody has subordinate ids on this host")
    if (
        not os.access(SRC, os.R_OK)
        or subprocess.run(["setpriv", "--reuid=nobody", "test", "-r", str(SRC / "composer")], check=False).returncode != 0
    ):
        pytest.skip(f"nobody cannot read {SRC}")
    out = Path("/tmp") / f"composer-userns-test-{os.getpid()}"
    proc = _as_nobody("runtime", "--product", "TestProduct", "--version", "1", "--source", "file:///nonexistent", str(out))
    assert proc.returncode == 1, proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("composer: error: nobody has no range of 65536 subordinate ids in /etc/subuid")
    assert "add the line nobody:" in proc.stderr
    assert not out.exists()
    # commands that need no namespace still run as the user
    proc = _as_nobody("template-check", "--help")
    assert proc.returncode == 0, proc.stderr
    proc = _as_nobody("lorax", "--help")
    assert proc.returncode == 0 and "usage: composer lorax" in proc.stdout, proc.stderr


def test_module_runs_with_the_same_python():
    # the re-executed command is `sys.executable -m composer ARGV`: composer must be runnable so
    proc = subprocess.run(
        [sys.executable, "-m", "composer", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert proc.returncode == 0 and proc.stdout.startswith("composer ")
