"""Side by side: lorax's output tree against composer's, made from the same inputs (issue 19, item 4).

    python3 tools/lorax_compare.py LORAX_OUT COMPOSER_OUT [--limit N]

Compares, and prints every difference (up to --limit lines per section):
  - the output tree's file list, and boot.iso's (xorriso), by path and type;
  - .treeinfo (timestamps and checksums left out) and .discinfo (its timestamp left out);
  - the boot menus (EFI/BOOT/grub.cfg, boot/grub2/grub.cfg, isolinux/isolinux.cfg);
  - the initramfs (images/pxeboot/initrd.img): the dracut modules (usr/lib/dracut/modules.txt)
    and the kernel modules it carries;
  - install.img's file list with modes, owners and link targets (unsquashfs -lln; sizes
    and times left out; a squashfs holding LiveOS/rootfs.img is compared as that);
  - images/efiboot.img (a FAT image): its volume label and files with their sizes (mtools),
    and images/eltorito.img (GRUB's BIOS CD core image): its size and SHA-256.
Exit status 0 when nothing differs, 1 otherwise. Needs xorriso, unsquashfs, cpio, xz and mtools.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

MENUS = ("EFI/BOOT/grub.cfg", "boot/grub2/grub.cfg", "isolinux/isolinux.cfg")


def out_files(root: Path) -> set[str]:
    return {
        ("d " if p.is_dir() and not p.is_symlink() else "l " if p.is_symlink() else "f ") + p.relative_to(root).as_posix()
        for p in root.rglob("*")
    }


def iso_files(iso: Path) -> set[str]:
    if not iso.is_file():
        return set()
    r = subprocess.run(
        ["xorriso", "-indev", str(iso), "-find", "/", "-exec", "lsdl", "--"], capture_output=True, text=True, check=True
    )
    files = set()
    for line in r.stdout.splitlines():
        m = re.match(r"^([-dlbcps])\S*\s+\d+\s+\S+\s+\S+\s+\d+\s+\S+\s+\S+\s+\S+\s+'(.*?)'", line)
        if m:
            files.add(("f" if m.group(1) == "-" else m.group(1)) + " " + m.group(2).lstrip("/"))
    return files


def treeinfo(path: Path) -> list[str]:
    if not path.is_file():
        return ["(missing)"]
    lines = []
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line
        if section == "[checksums]" and "=" in line or line.startswith("timestamp"):
            continue
        lines.append(line)
    return lines


def discinfo(path: Path) -> list[str]:
    if not path.is_file():
        return ["(missing)"]
    lines = path.read_text().splitlines()
    return ["(timestamp)", *lines[1:]] if lines else []


def text_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.is_file() else ["(missing)"]


def initramfs_members(img: Path, tmp: Path) -> tuple[list[str], list[str]]:
    """(dracut modules, kernel modules) of an initramfs (xz, gzip, zstd or plain cpio)."""
    if not img.is_file():
        return ["(missing)"], ["(missing)"]
    head = img.read_bytes()[:6]
    decomp = (
        ["xz", "-dc"]
        if head.startswith(b"\xfd7zXZ")
        else ["gzip", "-dc"]
        if head.startswith(b"\x1f\x8b")
        else ["zstd", "-dc"]
        if head.startswith(b"\x28\xb5\x2f\xfd")
        else ["cat"]
    )
    cpio = tmp / (img.name + ".cpio")
    with open(cpio, "wb") as f:
        subprocess.run([*decomp, str(img)], stdout=f, check=True)
    names = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(cpio, "rb"), capture_output=True, text=True).stdout
    kmods = sorted(Path(n).name for n in names.splitlines() if re.search(r"\.ko(\.xz|\.zst|\.gz)?$", n))
    mods = subprocess.run(
        ["cpio", "-i", "--quiet", "--to-stdout", "usr/lib/dracut/modules.txt"],
        stdin=open(cpio, "rb"),
        capture_output=True,
        text=True,
    ).stdout
    cpio.unlink()
    return sorted(mods.split()), kmods


def squash_listing(img: Path, tmp: Path) -> list[str]:
    """install.img as `mode owner path[ -> target]` lines; a LiveOS/rootfs.img inside is listed instead."""
    if not img.is_file():
        return ["(missing)"]
    r = subprocess.run(["unsquashfs", "-lln", str(img)], capture_output=True, text=True, check=True)
    lines = []
    for line in r.stdout.splitlines():
        parts = line.split(None, 2)
        m = re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d (squashfs-root.*)$", line)
        if len(parts) < 3 or not m or not re.match(r"^[-dlbcps][rwxsStT-]{9}$", parts[0]):
            continue
        path = m.group(1).removeprefix("squashfs-root") or "/"
        lines.append(f"{parts[0]} {parts[1]} {path}")
    if any(x.endswith(" /LiveOS/rootfs.img") for x in lines) and len(lines) <= 3:
        lines = [f"(LiveOS/rootfs.img inside: {len(lines)} entries; not unpacked)"]
    return sorted(lines, key=lambda x: x.split(" ", 2)[2])


def fat_listing(img: Path) -> list[str]:
    """A FAT image's volume label and its files with their sizes (mdir, no mount)."""
    if not img.is_file():
        return ["(missing)"]
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    label = subprocess.run(["mlabel", "-s", "-i", str(img), "::"], capture_output=True, text=True, env=env).stdout.strip()
    r = subprocess.run(["mdir", "-/", "-b", "-i", str(img), "::"], capture_output=True, text=True, env=env)
    lines = [f"label: {label.removeprefix('Volume label is ')}"]
    for name in sorted(r.stdout.split()):
        if name.endswith("/"):
            lines.append(f"d {name.removeprefix('::/')}")
            continue
        info = subprocess.run(["mdir", "-i", str(img), name], capture_output=True, text=True, env=env).stdout
        size = re.search(r"\s(\d[\d ]*)\s+\d{4}-\d\d-\d\d", info)
        lines.append(f"f {name.removeprefix('::/')} {size.group(1).replace(' ', '') if size else '?'}")
    return lines


def digest(img: Path) -> list[str]:
    """A binary image by size and SHA-256 (GRUB's core image compresses its modules: no names to list)."""
    if not img.is_file():
        return ["(missing)"]
    return [f"{img.stat().st_size} bytes, sha256 {hashlib.sha256(img.read_bytes()).hexdigest()}"]


def report(title: str, a: Iterable[str], b: Iterable[str], limit: int) -> int:
    a_list, b_list = list(a), list(b)
    a_set, b_set = set(a_list), set(b_list)
    only_a, only_b = sorted(a_set - b_set), sorted(b_set - a_set)
    if not only_a and not only_b and a_list == b_list:
        print(f"== {title}: same ({len(a_set)} entries)")
        return 0
    print(f"== {title}: lorax {len(a_set)}, composer {len(b_set)}; only lorax {len(only_a)}, only composer {len(only_b)}")
    if not only_a and not only_b:
        for line in list(difflib.unified_diff(a_list, b_list, "lorax", "composer", lineterm="", n=0))[:limit]:
            print("   " + line)
        return 1
    for label, items in (("- lorax only", only_a), ("+ composer only", only_b)):
        for x in items[:limit]:
            print(f"   {label}: {x}")
        if len(items) > limit:
            print(f"   {label}: ... {len(items) - limit} more")
    return 1


def compare(lorax: Path, composer: Path, limit: int) -> int:
    diffs = 0
    diffs += report("output tree files", out_files(lorax), out_files(composer), limit)
    diffs += report("boot.iso files", iso_files(lorax / "images/boot.iso"), iso_files(composer / "images/boot.iso"), limit)
    diffs += report(".treeinfo", treeinfo(lorax / ".treeinfo"), treeinfo(composer / ".treeinfo"), limit)
    diffs += report(".discinfo", discinfo(lorax / ".discinfo"), discinfo(composer / ".discinfo"), limit)
    for menu in MENUS:
        if (lorax / menu).exists() or (composer / menu).exists():
            diffs += report(f"menu {menu}", text_lines(lorax / menu), text_lines(composer / menu), limit)
    with tempfile.TemporaryDirectory(prefix="lorax-compare.") as t:
        tmp = Path(t)
        la, lk = initramfs_members(lorax / "images/pxeboot/initrd.img", tmp)
        ca, ck = initramfs_members(composer / "images/pxeboot/initrd.img", tmp)
        diffs += report("initramfs dracut modules", la, ca, limit)
        diffs += report("initramfs kernel modules", lk, ck, limit)
        diffs += report(
            "install.img (mode owner path -> target)",
            squash_listing(lorax / "images/install.img", tmp),
            squash_listing(composer / "images/install.img", tmp),
            limit,
        )
    diffs += report(
        "efiboot.img (FAT)", fat_listing(lorax / "images/efiboot.img"), fat_listing(composer / "images/efiboot.img"), limit
    )
    diffs += report(
        "eltorito.img (bytes)",
        digest(lorax / "images/eltorito.img"),
        digest(composer / "images/eltorito.img"),
        limit,
    )
    print(f"{diffs} section(s) differ")
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lorax", type=Path, help="lorax's output directory")
    p.add_argument("composer", type=Path, help="composer lorax's output directory")
    p.add_argument("--limit", type=int, default=40, help="lines per section (default 40)")
    args = p.parse_args(argv)
    return compare(args.lorax, args.composer, args.limit)


if __name__ == "__main__":
    sys.exit(main())
