"""The dracut stage: build an initramfs inside the tree, once for every kernel in it."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from composer.config import RootfsType
from composer.run import DATADIR, ComposerError, CommandError, in_tree_argv, info, run

# The filesystem driver dmsquash-live needs for LiveOS/rootfs.img; dracut does not
# add it by itself because it looks at the build host, not at the image.
ROOTFS_DRIVERS = {
    RootfsType.BTRFS: ["btrfs"],
    RootfsType.EXT4: ["ext4"],
    RootfsType.EROFS: ["erofs"],
    RootfsType.SQUASHFS: [],
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path  # inside the tree


def find_kernels(tree: Path) -> list[Kernel]:
    """Every kernel with modules in the tree, newest first.

    Fedora keeps vmlinuz in /lib/modules/KVER/, Debian in /boot/vmlinuz-KVER.
    """
    kernels = []
    moddir = tree / "usr/lib/modules"
    if not moddir.is_dir():
        moddir = tree / "lib/modules"
    for d in sorted(moddir.glob("*")) if moddir.is_dir() else []:
        for candidate in (d / "vmlinuz", tree / "boot" / f"vmlinuz-{d.name}"):
            if candidate.is_file():
                kernels.append(Kernel(d.name, candidate))
                break
    kernels.sort(key=lambda k: _version_key(k.version), reverse=True)
    return kernels


def _version_key(v: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~_]", v)]


def take_kernels(tree: Path, dest: Path) -> list[Kernel]:
    """Copy every kernel image out of the tree (the cleanup may delete it from the runtime)."""
    kernels = find_kernels(tree)
    if not kernels:
        raise ComposerError(f"no kernel in the tree ({tree}/usr/lib/modules has none with a vmlinuz): the templates must install one")
    dest.mkdir(parents=True, exist_ok=True)
    taken = []
    for k in kernels:
        copy = dest / f"vmlinuz-{k.version}"
        shutil.copy2(k.vmlinuz, copy)
        taken.append(Kernel(k.version, copy))
    return taken


def dracut_argv(kver: str, output: str, rootfs: RootfsType, extra: Sequence[str], *, reproducible: bool = False) -> list[str]:
    drivers = ROOTFS_DRIVERS[rootfs]
    argv = ["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--kver", kver]
    if reproducible:
        # Sorted cpio, mtimes clamped to SOURCE_DATE_EPOCH (given in the environment).
        # Our dracut.conf says so too, but a user's --dracut-conf must not undo it.
        argv += ["--reproducible"]
    if drivers:
        argv += ["--add-drivers", " ".join(drivers)]
    return argv + list(extra) + [output]


def build_initramfs(
    tree: Path,
    kernels: list[Kernel],
    outdir: Path,
    *,
    rootfs: RootfsType,
    dracut_args: Sequence[str] = (),
    dracut_conf: Path | None = None,
    source_date_epoch: int | None = None,
) -> dict[str, Path]:
    """Run dracut in the tree for every kernel; return {kver: initramfs path in outdir}.

    The tree is not changed: our configuration is bound in read-only and the
    initramfs is written to a directory bound under /tmp.
    """
    epoch = source_date_epoch
    if epoch is None and "SOURCE_DATE_EPOCH" in os.environ:
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    if not (tree / "usr/bin/dracut").exists() and not (tree / "usr/sbin/dracut").exists():
        raise ComposerError("dracut is not installed in the tree: the templates must install it")
    outdir.mkdir(parents=True, exist_ok=True)
    ro_binds: list[tuple[Path, str]] = []
    confdir = DATADIR / "share" / "dracut"
    for conf in sorted(confdir.glob("*.conf")):
        ro_binds.append((conf, f"/etc/dracut.conf.d/{conf.name}"))
    if dracut_conf is not None:
        if not dracut_conf.is_file():
            raise ComposerError(f"--dracut-conf {dracut_conf}: no such file")
        ro_binds.append((dracut_conf.resolve(), "/etc/dracut.conf.d/99-user.conf"))
    # bwrap needs the mount points to exist; /etc/dracut.conf.d is dracut's own directory.
    (tree / "etc/dracut.conf.d").mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    for k in kernels:
        info(f"dracut: kernel {k.version}")
        argv = dracut_argv(k.version, f"/tmp/out/initramfs-{k.version}.img", rootfs, dracut_args,
                           reproducible=epoch is not None)
        try:
            run(in_tree_argv(tree, argv, binds=[(outdir, "/tmp/out")], ro_binds=ro_binds),
                env={"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else None)
        except CommandError as e:
            raise ComposerError(f"dracut failed for kernel {k.version} (exit {e.returncode}): {e.reason}") from None
        result[k.version] = outdir / f"initramfs-{k.version}.img"
    return result
