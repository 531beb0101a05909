"""The big initrd: dracut initramfs + an uncompressed cpio with /squashfs.img and /etc/cmdline.

One file to netboot: the kernel unpacks both archives into its rootfs, dracut reads
/etc/cmdline (root=live:/squashfs.img) and dmsquash-live loop-mounts the squashfs
from RAM. The appended cpio stays uncompressed: squashfs.img is compressed already,
and a second compression would only cost boot time and a decompression buffer in RAM.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from composer.config import RootfsType
from composer.images.cpio import CpioEntry, write_newc
from composer.run import ComposerError, info

SQUASHFS_NAME = "squashfs.img"  # dracut wants root=live:/NAME with NAME ending in .img


def runtime_cmdline(rootfs: RootfsType, extra: Sequence[str] = ()) -> str:
    """Kernel arguments the big initrd carries in /etc/cmdline: the live image is in the
    initramfs, with what dmsquash-live needs for this root (RootfsType.live_args)."""
    return " ".join([f"root=live:/{SQUASHFS_NAME}", "rd.live.image", *rootfs.live_args, *extra])


def make_big_initrd(initramfs: Path, squashfs: Path, cmdline: str, dest: Path, *, mtime: int = 0) -> int:
    """dest = initramfs, zero padding to 4 bytes, newc(etc/, etc/cmdline, squashfs.img).

    Written as dest.tmp and renamed, so dest is never half-written. Returns the offset
    of the appended archive.
    """
    for what, p in (("initramfs", initramfs), ("squashfs", squashfs)):
        if not p.is_file():
            raise ComposerError(f"big initrd: {what} {p} does not exist")
    if "\n" in cmdline.strip():
        raise ComposerError("big initrd: the command line must be a single line")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with tmp.open("wb") as out, initramfs.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            # The kernel looks for each cpio header at a 4-byte aligned offset and
            # skips NUL bytes between archives.
            out.write(b"\0" * (-out.tell() % 4))
            tail = out.tell()
            write_newc(
                out,
                [
                    CpioEntry.directory("etc", 0o755, mtime=mtime),
                    CpioEntry.file("etc/cmdline", (cmdline.strip() + "\n").encode(), 0o644, mtime=mtime),
                    CpioEntry.file(SQUASHFS_NAME, squashfs, 0o644, mtime=mtime),
                ],
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    info(
        f"big initrd: {dest.name} {dest.stat().st_size / (1 << 20):.1f} MiB "
        f"(initramfs {initramfs.stat().st_size / (1 << 20):.1f} MiB, squashfs appended at offset {tail})"
    )
    return tail
