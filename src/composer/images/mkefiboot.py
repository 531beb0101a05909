"""lorax's `mkefiboot` (what efi.tmpl runs on the host), without loop devices or mounts.

lorax's own mkefiboot loop-mounts a FAT image (and needs root, udevadm and vfat in the
host kernel). This one takes its command line, `mkefiboot [--debug] [-l|--label=L]
EFIBOOTDIR OUTFILE`, and makes the same image: a FAT filesystem labelled L (default
"EFI") holding EFIBOOTDIR as /EFI/BOOT, made by images.efiboot (mkfs.fat -C and mtools).
`--disk` (a GPT disk image) and the Apple options (`--apple`, `--icon`, `--diskname`,
`--product`) are refused with a reason: no stock x86_64 or aarch64 template asks for them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from composer.images.efiboot import make_efiboot
from composer.run import ComposerError

__all__ = ["main", "parse"]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mkefiboot", description="Make an EFI boot image from the given directory.")
    p.add_argument("--debug", action="store_true")
    p.add_argument("-d", "--disk", action="store_true")
    p.add_argument("-a", "--apple", action="store_true")
    p.add_argument("-l", "--label", default="EFI")
    p.add_argument("-i", "--icon")
    p.add_argument("-n", "--diskname")
    p.add_argument("-p", "--product")
    p.add_argument("bootdir")
    p.add_argument("outfile")
    try:
        return p.parse_args(list(argv))
    except SystemExit:
        raise ComposerError(f"mkefiboot: bad command line: {' '.join(argv)}") from None


def main(argv: Sequence[str]) -> Path:
    """Run lorax's mkefiboot command line; return the image made."""
    opt = parse(argv)
    if opt.disk or opt.apple or opt.icon or opt.diskname or opt.product:
        raise ComposerError("mkefiboot: --disk and the Apple options (--apple, --icon, --diskname, --product) are not supported")
    bootdir = Path(opt.bootdir)
    if not bootdir.is_dir():
        raise ComposerError(f"mkefiboot: {bootdir} is not a directory")
    files = sorted(p for p in bootdir.rglob("*") if p.is_file())
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return make_efiboot(
        [(f, "EFI/BOOT/" + f.relative_to(bootdir).as_posix()) for f in files],
        Path(opt.outfile),
        label=opt.label,
        source_date_epoch=int(epoch) if epoch and epoch.isdigit() else None,
        seed=str(opt.outfile),
    )
