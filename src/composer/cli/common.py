"""What several subcommands check or read the same way: input and log files, SOURCE_DATE_EPOCH,
directories composer works inside (trusted_dir)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from composer.preflight import check_dir_creatable, check_outputs_apart
from composer.run import ComposerError
from composer.userns import inside

# cpio (newc) and squashfs keep 32-bit timestamps: a later epoch cannot be stored.
MAX_EPOCH = 2**32 - 1


def source_date_epoch(option: int | None) -> int | None:
    if option is not None:
        if option < 0:
            raise ComposerError(f"--source-date-epoch {option}: must not be negative")
        if option > MAX_EPOCH:
            raise ComposerError(f"--source-date-epoch {option}: too large (at most {MAX_EPOCH})")
        return option
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if not env:
        return None
    if not env.isdigit() or not env.isascii():
        raise ComposerError(f"SOURCE_DATE_EPOCH={env!r}: expected a number of seconds since 1970")
    if len(env) > len(str(MAX_EPOCH)) or int(env) > MAX_EPOCH:
        raise ComposerError(f"SOURCE_DATE_EPOCH={env[:20]}: too large (at most {MAX_EPOCH})")
    return int(env)


def check_input_file(path: Path, option: str) -> None:
    """An input file: exists, is a regular file (not a directory or a device), not empty."""
    if not os.path.lexists(path):
        raise ComposerError(f"{option} {path}: no such file")
    if path.is_dir():
        raise ComposerError(f"{option} {path}: is a directory (give the file itself)")
    if not path.is_file():
        raise ComposerError(f"{option} {path}: not a regular file")
    if path.stat().st_size == 0:
        raise ComposerError(f"{option} {path}: empty file")


def check_logfile(path: Path | None, option: str) -> None:
    """A log is appended to: never a system file, a directory or something not a file."""
    if path is None:
        return
    check_outputs_apart([(option, path)], [])
    if path.is_dir():
        raise ComposerError(f"{option} {path}: is a directory")
    if os.path.lexists(path) and not path.is_file():
        raise ComposerError(f"{option} {path}: not a regular file")
    check_dir_creatable(Path(os.path.abspath(path)).parent, option)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _overflow_uid() -> int:
    """The owner the kernel shows, in a user namespace, for ids it does not map (root's among them)."""
    try:
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534


def trusted_dir(path: Path, option: str) -> Path:
    """`path` with its links resolved (a /var/tmp linked to a build volume works), refused
    when a user other than root or composer's own could rename or replace what composer
    makes in it: a directory on the way that such a user owns, or that others may write
    without the sticky bit. composer's work directory inside gets a fresh unpredictable
    name, and nothing outside it is written. In composer's own user namespace (an ordinary
    user) root's directories show as the overflow uid, so that owner is accepted there."""
    real = Path(os.path.realpath(path))
    trusted = {0, os.geteuid()} | ({_overflow_uid()} if inside() else set())
    shown = f"{option} {path}" + (f" (leads to {real})" if real != Path(os.path.abspath(path)) else "")
    for d in (real, *real.parents):
        try:
            st = os.stat(d)
        except FileNotFoundError:
            continue  # composer creates it (as its own user)
        except OSError as e:
            raise ComposerError(f"{shown}: {d}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ComposerError(f"{shown}: {d} is not a directory")
        if st.st_uid not in trusted:
            raise ComposerError(
                f"{shown}: {d} belongs to {_owner(st.st_uid)}, who could change what composer builds "
                "there; give a directory that only root or you can write"
            )
        others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid()))
        if others and not st.st_mode & stat.S_ISVTX:
            raise ComposerError(
                f"{shown}: {d} is writable by other users (and not sticky), who could change what "
                "composer builds there; give a directory that only root or you can write"
            )
    return real
