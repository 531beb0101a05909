"""What several subcommands check or read the same way: input and log files, SOURCE_DATE_EPOCH."""

from __future__ import annotations

import os
from pathlib import Path

from composer.preflight import check_dir_creatable, check_outputs_apart
from composer.run import ComposerError

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
