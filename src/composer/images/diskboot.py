"""GRUB for a disk image (`--make-disk`), from the image's own tree: its grub-mkimage run
inside it, its modules, its boot.img. Never the build host's: a disk boots what it carries.

One grub.cfg on the partition holding /boot serves BIOS and UEFI; both core images carry a
small embedded configuration that finds that partition by its filesystem UUID and reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from composer.images.efiboot import GrubSource, find_grub, grub_mkimage
from composer.run import ComposerError

# What the disk's core images need: the table, the filesystems /boot can be on, the
# kernel loader and the commands of grub.cfg. All embedded: no module directory on disk.
DISK_MODULES = (
    "part_gpt",
    "part_msdos",
    "ext2",
    "btrfs",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "gzio",
    "xzio",
    "zstd",
    "boot",
    "minicmd",
    "ls",
    "cat",
    "sleep",
    "reboot",
    "halt",
)
PLATFORM_DISK_MODULES = {"i386-pc": ("biosdisk",), "x86_64-efi": ("efi_gop",)}
# What the kickstart's %packages must install for each (Debian's names; Fedora's grub2-*).
GRUB_PACKAGES = {"i386-pc": "grub-pc-bin / grub2-pc-modules", "x86_64-efi": "grub-efi-amd64-bin / grub2-efi-x64-modules"}


@dataclasses.dataclass(frozen=True)
class BootEntry:
    title: str
    kernel: str  # path on the /boot partition's filesystem
    initrd: str
    args: str


def tree_grub(tree: Path, platform: str) -> GrubSource:
    """GRUB for `platform` from the tree, or one line naming the packages to install."""
    src = find_grub(tree, platform) if _has_grub(tree, platform) else None
    if src is None or src.tree is None:
        raise ComposerError(
            f"--make-disk: no GRUB {platform} in the image's tree; the kickstart's %packages must install it "
            f"({GRUB_PACKAGES.get(platform, 'grub')} and grub-mkimage)"
        )
    return src


def _has_grub(tree: Path, platform: str) -> bool:
    dirs = (tree / "usr/lib/grub" / platform, tree / "usr/lib/grub2" / platform)
    tools = [tree / d / n for d in ("usr/bin", "usr/sbin") for n in ("grub-mkimage", "grub2-mkimage")]
    return any((d / "kernel.img").is_file() for d in dirs) and any(t.exists() for t in tools)


def grub_dir(tree: Path) -> str:
    """Where grub.cfg goes in the tree: Fedora's /boot/grub2 or Debian's /boot/grub."""
    return "boot/grub2" if (tree / "usr/lib/grub2").is_dir() or (tree / "usr/bin/grub2-mkimage").exists() else "boot/grub"


def early_config(boot_uuid: str, cfg_on_boot: str) -> str:
    """The configuration embedded in core.img and BOOTX64.EFI: find /boot's filesystem, read grub.cfg."""
    return (
        f"search --no-floppy --fs-uuid --set=root {boot_uuid}\n"
        f"set prefix=($root){cfg_on_boot.rsplit('/', 1)[0]}\n"
        f"configfile ($root){cfg_on_boot}\n"
    )


def grub_cfg(entries: Sequence[BootEntry], boot_uuid: str) -> str:
    """grub.cfg of the disk: the first entry boots after a second; serial and screen both."""
    lines = [
        "# made by composer livemedia --make-disk",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set timeout=1",
        "set default=0",
    ]
    for e in entries:
        lines += [
            f"menuentry '{e.title}' {{",
            f"\tsearch --no-floppy --fs-uuid --set=root {boot_uuid}",
            f"\tlinux {e.kernel} {e.args}",
            f"\tinitrd {e.initrd}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def make_core_images(tree: Path, work: Path, early_cfg: str) -> tuple[Path, Path, Path]:
    """(core.img, boot.img, BOOTX64.EFI), made by the tree's grub-mkimage in the tree."""
    work.mkdir(parents=True, exist_ok=True)
    embed = work / "early.cfg"
    embed.write_text(early_cfg)
    pc = tree_grub(tree, "i386-pc")
    efi = tree_grub(tree, "x86_64-efi")
    core = grub_mkimage(
        pc, "i386-pc", "/boot/grub", work / "core.img", modules=DISK_MODULES + PLATFORM_DISK_MODULES["i386-pc"], config=embed
    )
    bootx64 = grub_mkimage(
        efi,
        "x86_64-efi",
        "/EFI/BOOT",
        work / "BOOTX64.EFI",
        modules=DISK_MODULES + PLATFORM_DISK_MODULES["x86_64-efi"],
        config=embed,
    )
    boot_img = pc.moddir / "boot.img"
    if not boot_img.is_file():
        raise ComposerError(f"--make-disk: the tree's GRUB i386-pc has no boot.img ({boot_img})")
    return core, boot_img, bootx64
