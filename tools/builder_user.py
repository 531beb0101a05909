"""An ordinary user of this machine, as a builder has one (test_rootless.py, the ssh runroot
of tools/pungirun.py): a fresh account with a home and subordinate ids, and composer
pip-installed by that user as the README says, from a copy of this checkout."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from composer.userns import MIN_IDS, free_start, parse_subid, usable_range

ROOT = Path(__file__).resolve().parents[1]
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def remove_user(name: str) -> None:
    # userdel drops the user's /etc/subuid and /etc/subgid ranges too.
    subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, check=False)


def _remove_stale_users(prefix: str) -> None:
    """Users made by processes that were killed before their teardown (prefix + their pid)."""
    for entry in pwd.getpwall():
        pid = entry.pw_name.removeprefix(prefix)
        if entry.pw_name.startswith(prefix) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_user(entry.pw_name)


@contextlib.contextmanager
def ordinary_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A fresh user (prefix + this pid) with a home and subordinate ids; removed afterwards
    with its home."""
    name = f"{prefix}{os.getpid()}"
    _remove_stale_users(prefix)
    remove_user(name)
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name], check=True, capture_output=True)
    try:
        user = pwd.getpwnam(name)
        texts = [Path(p).read_text() if Path(p).exists() else "" for p in ("/etc/subuid", "/etc/subgid")]
        if not all(usable_range(parse_subid(t, name, user.pw_uid)) for t in texts):
            # useradd allocates a range only where /etc/subuid exists: give one as an admin would.
            start = free_start(*texts)
            ids = f"{start}-{start + MIN_IDS - 1}"
            subprocess.run(["usermod", "--add-subuids", ids, "--add-subgids", ids, name], check=True, capture_output=True)
        yield user
    finally:
        remove_user(name)


def user_command(user: pwd.struct_passwd, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and the environment to run it as `user`: its own uid and gid, no supplementary
    group (setpriv execs argv: a signal reaches argv itself), a clean environment plus env."""
    setpriv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv]
    return setpriv, {"PATH": PATH, "HOME": user.pw_dir, "LC_ALL": "C.UTF-8", **env}


def as_user(user: pwd.struct_passwd, argv: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    """argv run to its end as `user` (user_command), its output captured."""
    cmd, cmd_env = user_command(user, argv, env)
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False, env=cmd_env, **kw)


def pip_install(user: pwd.struct_passwd, base: Path) -> Path:
    """composer and composer-lorax pip-installed by the user into ~/composer (a venv of
    Debian's python3) from a copy of this checkout in base, their dependencies from the
    package index pip is configured with; returns the venv's bin directory."""
    src = base / "composer-src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "tmp", "__pycache__", "*.egg-info"))
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(src)], check=True)
    venv = Path(user.pw_dir) / "composer"
    for argv in (
        ["/usr/bin/python3", "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "--quiet", str(src), str(src / "extras/lorax")],
    ):
        proc = as_user(user, argv, {}, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} as {user.pw_name} failed:\n{proc.stderr[-3000:]}")
    return venv / "bin"
