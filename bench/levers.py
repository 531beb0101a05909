"""`make bench-levers`: the RAM levers of issue 23 item 3, each beside the default, in one run.

Each row is its own compose of the test product from the same repository, so every figure
compares with the default measured minutes apart on the same machine:

- boot.iso (BIOS CD): the squashfs block size. The runtime is read from the CD, so its size
  is not RAM; what is RAM is the page cache, and each refault of an evicted page decompresses
  a whole block (1 MiB by default, lorax's 128 KiB).
- boot.iso (BIOS CD): the rootfs type. btrfs in squashfs caches each page the runtime reads
  twice (rootfs.img's page in squashfs, the file's page in btrfs); a plain squashfs once.
- big initrd: the block size (the image is RAM, so bigger; but each refault decompresses less).
- big initrd: the rootfs type. squashfs.img is RAM for the whole boot, once as loaded and once
  unpacked: a plain squashfs of the tree (overlayfs for writes) against btrfs in squashfs.
- big initrd: xz's x86 BCJ filter (size only: the budget follows from the parts).

Environment: LEVERS=iso-block,iso-rootfs,big-block,big-rootfs,big-bcj (default
all), LEVERS_RAM=1 bisects
the floors (0: sizes, budgets and limits only), LEVERS_THRASH_S=300 caps a boot below the usable
floor (the thrashing floor is "reached within that"). Results in build/bench/levers.{json,md}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import bench
from bench import BUILD, CHECK_ARGS, MIB, OUT, bench_config, floor_row, iso_boot, part, ram_floor, timed

from composer.config import Compression, RootfsType
from composer.images import squashfs
from composer.outputs import ram
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.pipelines.bootiso import MediaOptions, compose_boot_iso
from composer.pipelines.runtime import compose_runtime
from testproduct import build_testproduct

LOUT = OUT / "levers"
GROUPS = ("iso-block", "iso-rootfs", "big-block", "big-rootfs", "big-bcj")
BLOCK_DEFAULT = squashfs.BLOCK_SIZE
# make bench's floors (bench.ram_floor), each thrashing boot cut shorter: a lever that moves the
# usable floor shows without the wait.
THRASH_S = float(os.environ.get("LEVERS_THRASH_S", "300"))
# LEVERS_DEFAULT=0: the variants alone, to compare with the default rows of a make bench run just before.
WITH_DEFAULT = os.environ.get("LEVERS_DEFAULT", "1") not in ("", "0")


@contextlib.contextmanager
def block_size(size: str) -> Iterator[None]:
    """mksquashfs's -b for the composes inside (squashfs_argv reads the module's constant)."""
    old = squashfs.BLOCK_SIZE
    squashfs.BLOCK_SIZE = size
    try:
        yield
    finally:
        squashfs.BLOCK_SIZE = old


def iso_row(source: str, name: str, bisect: bool, rootfs: RootfsType) -> dict[str, object]:
    cfg = dataclasses.replace(bench_config(source, LOUT / name), rootfs_type=rootfs)
    wall, _cpu, _ = timed(compose_boot_iso, cfg, MediaOptions(volid="TestProduct-1-x86_64"))
    iso = cfg.outdir / "images/boot.iso"
    pxe = cfg.outdir / "images/pxeboot"
    row = floor_row(ram.predict("media", pxe / "vmlinuz", pxe / "initrd.img").as_dict())
    row |= {
        "compose_s": wall,
        "install_img_mib": round((cfg.outdir / "images/install.img").stat().st_size / MIB, 1),
        "iso_mib": round(iso.stat().st_size / MIB, 1),
    }
    if bisect:
        row |= ram_floor(None, None, LOUT / f"boots-{name}", timeout=THRASH_S, boot=iso_boot(iso, "bios"))
    shutil.rmtree(cfg.outdir)
    return row


def big_row(source: str, name: str, bisect: bool, rootfs: RootfsType) -> dict[str, object]:
    cfg = dataclasses.replace(bench_config(source, LOUT / name), rootfs_type=rootfs)
    wall, _cpu, _ = timed(compose_runtime, cfg)
    manifest = json.loads((cfg.outdir / "manifest.json").read_text())
    row = floor_row(next(iter(manifest["ram"].values())))
    row |= {"compose_s": wall, "squashfs_mib": round(manifest["sizes"]["squashfs"] / MIB, 1)}
    pxe = cfg.outdir / "images/pxeboot"
    if bisect:
        row |= ram_floor(pxe / "vmlinuz", pxe / "initrd.img", LOUT / f"boots-{name}", timeout=THRASH_S, check_args=CHECK_ARGS)
    shutil.rmtree(cfg.outdir)
    return row


def bcj_rows(source: str) -> dict[str, dict[str, object]]:
    """The default runtime's LiveOS/rootfs.img squashed without and with -Xbcj x86: sizes and the
    big initrd's budget and limit from its parts (no boot: the parts are what changes)."""
    cfg = bench_config(source, LOUT / "bcj")
    compose_runtime(cfg)
    manifest = json.loads((cfg.outdir / "manifest.json").read_text())
    pxe = cfg.outdir / "images/pxeboot"
    # The big initrd begins with the initramfs, as many bytes as the manifest lists.
    initramfs = LOUT / "initramfs.img"
    with (pxe / "initrd.img").open("rb") as f:
        initramfs.write_bytes(f.read(manifest["sizes"][f"initramfs-{manifest['kernels'][0]}"]))
    src = LOUT / "bcj-src"
    subprocess.run(["unsquashfs", "-n", "-d", str(src), str(cfg.outdir / "images/install.img")], check=True, capture_output=True)
    rows: dict[str, dict[str, object]] = {}
    for label, bcj in (("xz (default)", False), ("xz -Xbcj x86", True)):
        img, big = LOUT / "bcj.img", LOUT / "bcj-initrd.img"
        # composer's own argv (squashfs_argv), with the filter added for the second row.
        argv = squashfs.squashfs_argv(src, img, Compression.XZ) + (["-Xbcj", "x86"] if bcj else [])
        wall, cpu, _ = timed(subprocess.run, argv, check=True)
        at = make_big_initrd(initramfs, img, runtime_cmdline(RootfsType.BTRFS), big)
        budget = ram.predict_big_initrd(pxe / "vmlinuz", big, initramfs_unpacked=ram.unpacked_ram(initramfs), appended_at=at)
        rows[f"big initrd, squashfs {label}"] = floor_row(budget.as_dict()) | {
            "mksquashfs_s": wall,
            "mksquashfs_cpu_s": cpu,
            "squashfs_mib": round(img.stat().st_size / MIB, 1),
        }
    shutil.rmtree(src)
    shutil.rmtree(cfg.outdir)
    return rows


def table(rows: dict[str, dict[str, object]]) -> str:
    lines = [
        f"| lever (RAM in MB) | squashfs MiB | predicted budget | physical limit | usable floor | marker within {THRASH_S:.0f} s "
        "| boot at 512 MB s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        sq = r.get("squashfs_mib", r.get("install_img_mib", "n/a"))
        lines.append(
            f"| {name} | {sq} | {r['budget_mb']} | {r.get('limit_mb', 'n/a')} | {r.get('ram_floor_mb') or 'n/a'} | "
            f"{r.get('ram_reached_mb') or 'n/a'} | {r.get('boot_512_s') or 'n/a'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    groups = [g for g in os.environ.get("LEVERS", ",".join(GROUPS)).split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        print(f"bench-levers: LEVERS={','.join(unknown)}: one of {', '.join(GROUPS)}", file=sys.stderr)
        return 1
    bisect = os.environ.get("LEVERS_RAM", "1") not in ("", "0")
    if LOUT.exists():
        shutil.rmtree(LOUT)
    LOUT.mkdir(parents=True)
    with part("test product repository"):
        source = f"file://{build_testproduct(BUILD / 'testproduct')}"
    rows: dict[str, dict[str, object]] = {}
    # Each variant beside its default, composed and bisected in the same run.
    iso = {
        "iso-block": ("blocks 128K (lorax's)", "128K", RootfsType.BTRFS),
        "iso-rootfs": ("rootfs squashfs", BLOCK_DEFAULT, RootfsType.SQUASHFS),
    }
    big = {
        "big-block": ("blocks 128K", "128K", RootfsType.BTRFS),
        "big-rootfs": ("rootfs squashfs", BLOCK_DEFAULT, RootfsType.SQUASHFS),
    }
    for table_, make, what in ((iso, iso_row, "boot.iso BIOS CD"), (big, big_row, "big initrd")):
        chosen = [v for g, v in table_.items() if g in groups]
        default = [("default (btrfs, blocks 1M)", BLOCK_DEFAULT, RootfsType.BTRFS)] * (bool(chosen) and WITH_DEFAULT)
        for label, size, rootfs in default + chosen:
            name = f"{what}, {label}"
            with part(name), block_size(size):
                rows[name] = make(source, f"v{len(rows)}", bisect, rootfs)
    if "big-bcj" in groups:
        with part("big initrd, xz BCJ"):
            rows |= bcj_rows(source)
    (LOUT.parent / "levers.json").write_text(json.dumps({"load": bench.load(), "rows": rows}, indent=2) + "\n")
    md = table(rows)
    (LOUT.parent / "levers.md").write_text(md)
    print(md)
    shutil.rmtree(LOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
