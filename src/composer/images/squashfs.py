"""squashfs.img / install.img with mksquashfs.

Measured here on a 214 MiB tree (python3.11 + locales, 2 cores), -b 1M:
  xz -Xbcj x86   70 s  48 MiB
  zstd -19       51 s  54 MiB
  zstd -15       14 s  60 MiB
  zstd -3         2 s  67 MiB
  lz4 -Xhc       12 s  79 MiB
The big initrd keeps squashfs.img pinned in RAM for the whole boot, so size is RAM:
xz is the default, and zstd defaults to level 19 (zstd's decompression speed hardly
depends on the level; pass level=3 for quick development builds).

xz settings, measured 2026-11-29 on the test product's LiveOS/rootfs.img (btrfs, 241 MiB
allocated), mksquashfs 4.5.1, CPU seconds (user+sys; the machine was shared, load 5-10,
so CPU time is the figure to compare, wall time was 1.5-3x it):
  -b 1M   -Xbcj x86   154 s  50.5 MiB   (the default before)
  -b 1M               92 s  51.8 MiB   (the default now: -41% CPU, +2.5% size)
  -b 256K -Xbcj x86   142 s  53.8 MiB
  -b 256K              72 s  55.2 MiB
  (-b 128K -Xbcj x86 is lorax's setting: `make bench` times lorax's own pass over its tree)
-Xbcj makes mksquashfs compress every block twice (with and without the filter) and keep
the smaller: double the CPU for 2.5%. Smaller blocks save less time than dropping the
filter and cost more size (RAM). lorax's install.img of the same product is 53.4 MiB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from composer.config import Compression
from composer.reproducible import clamp_times
from composer.run import CommandError, ComposerError, _die_with_parent, debug, info, run

ZSTD_DEFAULT_LEVEL = 19
# The x86 BCJ filter for xz: off by default (see above: twice the CPU for 2.5% of size).
XZ_BCJ = False
# 1 MiB blocks (the maximum) compress noticeably better than the 128 KiB default;
# the cost is more read amplification, which is cheap when the image is in RAM.
BLOCK_SIZE = "1M"


def compression_args(
    compression: Compression, *, arch: str | None = None, level: int | None = None, bcj: bool = XZ_BCJ
) -> list[str]:
    arch = arch or platform.machine()
    if compression is Compression.XZ:
        args = ["-comp", "xz"]
        # The BCJ filter turns relative x86 call/jump targets into absolute ones,
        # which makes machine code compress a few percent better. x86 only.
        if bcj and arch in ("x86_64", "i386", "i586", "i686"):
            args += ["-Xbcj", "x86"]
        if level is not None:
            raise ComposerError("xz compression in squashfs has no level setting")
        return args
    if compression is Compression.ZSTD:
        lvl = ZSTD_DEFAULT_LEVEL if level is None else level
        if not 1 <= lvl <= 22:
            raise ComposerError(f"zstd compression level must be 1..22, not {lvl}")
        return ["-comp", "zstd", "-Xcompression-level", str(lvl)]
    if compression is Compression.LZ4:
        return ["-comp", "lz4", "-Xhc"]  # high-compression mode: same (fast) decompression
    raise ValueError(f"unknown compression {compression}")


def squashfs_argv(
    srcdir: Path,
    dest: Path,
    compression: Compression,
    *,
    processors: int | None = None,
    source_date_epoch: int | None = None,
    all_time: bool = False,
    level: int | None = None,
    arch: str | None = None,
) -> list[str]:
    argv = ["mksquashfs", os.fspath(srcdir), os.fspath(dest), "-noappend", "-no-progress", "-quiet", "-b", BLOCK_SIZE]
    argv += compression_args(compression, arch=arch, level=level)
    if processors:
        argv += ["-processors", str(processors)]
    # mksquashfs 4.5 reads SOURCE_DATE_EPOCH itself (setting *all* file times) and
    # refuses time options next to it, so an inherited variable wins.
    if source_date_epoch is not None and "SOURCE_DATE_EPOCH" not in os.environ:
        argv += ["-mkfs-time", str(source_date_epoch)]
        # Only for a wrapper holding LiveOS/rootfs.img: flattening the times of a real
        # tree would invalidate e.g. Python's mtime-checked .pyc files at runtime.
        if all_time:
            argv += ["-all-time", str(source_date_epoch)]
    # No -all-root: the tree's ownership is real (files owned by system users).
    return argv


def squashfs_env(source_date_epoch: int | None) -> dict[str, str] | None:
    """When mksquashfs reads SOURCE_DATE_EPOCH itself, make it read our value
    (--source-date-epoch overrides the environment)."""
    if source_date_epoch is not None and "SOURCE_DATE_EPOCH" in os.environ:
        return {"SOURCE_DATE_EPOCH": str(source_date_epoch)}
    return None


def make_squashfs(
    srcdir: Path,
    dest: Path,
    compression: Compression,
    *,
    processors: int | None = None,
    source_date_epoch: int | None = None,
    all_time: bool = False,
    level: int | None = None,
) -> None:
    """Pack srcdir (its contents, not the directory itself) into dest, replacing it.

    For the live runtime srcdir holds LiveOS/rootfs.img; for RootfsType.SQUASHFS it
    is the tree itself. With source_date_epoch the image's time is set to it and, unless
    all_time flattens every file time, srcdir's times are clamped to it first.
    """
    if not srcdir.is_dir():
        raise ComposerError(f"squashfs: {srcdir} is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    if source_date_epoch is not None and not all_time:
        clamp_times(srcdir, source_date_epoch)
    try:
        # mksquashfs sorts directory entries and (-reproducible, its default) packs
        # fragments in a fixed order, so equal trees and times give equal images.
        run(
            squashfs_argv(
                srcdir,
                tmp,
                compression,
                processors=processors,
                source_date_epoch=source_date_epoch,
                all_time=all_time,
                level=level,
            ),
            env=squashfs_env(source_date_epoch),
        )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    info(f"squashfs: {dest.name} {dest.stat().st_size / (1 << 20):.1f} MiB ({compression})")


# The background mksquashfs yields the CPU to the work beside it (dracut: mostly one process at a
# time, on the critical path until it ends; mksquashfs fills whatever is left). Measured on the
# Fedora-shaped product, stock templates, 2 cores, one run each: the lorax build 172 s with both
# at the same priority, 161 s with this, 168 s one after the other.
BESIDE_NICE = 10


def _beside() -> None:
    _die_with_parent()
    os.nice(BESIDE_NICE)


@dataclasses.dataclass
class SquashfsJob:
    """A mksquashfs running beside other work (see squashfs_beside); filled in when it ends."""

    dest: Path
    wall_s: float = 0.0
    cpu_s: float = 0.0  # its own user + system time (os.wait4), not mixed with the other work's


@contextlib.contextmanager
def squashfs_beside(
    srcdir: Path,
    dest: Path,
    compression: Compression,
    *,
    source_date_epoch: int | None = None,
    all_time: bool = False,
    level: int | None = None,
) -> Iterator[SquashfsJob]:
    """make_squashfs, started in the background while the with-block runs (e.g. dracut).

    The same argv as make_squashfs, so the same bytes. Leaving the block waits for it; an
    exception in the block (or Ctrl-C) kills it first. Output goes to a log beside dest
    (a pipe nobody reads could stall it); a failure raises CommandError with its tail.
    """
    if not srcdir.is_dir():
        raise ComposerError(f"squashfs: {srcdir} is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, log = dest.with_name(dest.name + ".tmp"), dest.with_name(dest.name + ".log")
    tmp.unlink(missing_ok=True)
    if source_date_epoch is not None and not all_time:
        clamp_times(srcdir, source_date_epoch)
    argv = squashfs_argv(srcdir, tmp, compression, source_date_epoch=source_date_epoch, all_time=all_time, level=level)
    env = squashfs_env(source_date_epoch)
    debug(f"$ {shlex.join(argv)} &")
    job = SquashfsJob(dest)
    status: list[int] = []
    try:
        with log.open("wb") as out:
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env} if env else None,
                    preexec_fn=_beside,
                )
            except FileNotFoundError as e:
                raise ComposerError(f"cannot run {shlex.join(argv)}: {e.strerror}") from None
        start = time.monotonic()

        def reap() -> None:
            # Reaped here, when it ends, so its wall time and rusage are its own.
            try:
                _, st, usage = os.wait4(child.pid, 0)
            except ChildProcessError:
                status.append(-1)
                return
            job.wall_s = round(time.monotonic() - start, 2)
            job.cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
            status.append(os.waitstatus_to_exitcode(st))

        waiter = threading.Thread(target=reap, name="mksquashfs-wait", daemon=True)
        waiter.start()
        try:
            yield job
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                if not status:
                    os.kill(child.pid, signal.SIGKILL)
            waiter.join()
            child.returncode = status[0] if status else -signal.SIGKILL  # reaped: Popen must not wait again
            raise
        waiter.join()
        child.returncode = status[0]
        text = log.read_text(errors="replace")
        if text.strip():
            debug(text.rstrip())
        if status[0] != 0:
            raise CommandError(argv, status[0], text)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
    info(f"squashfs: {dest.name} {dest.stat().st_size / (1 << 20):.1f} MiB ({compression}), {job.wall_s:.1f}s beside other work")
