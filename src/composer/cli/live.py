"""`composer delta|overlay|sparsify`: the LiveOS tools' command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.common import source_date_epoch
from composer.config import Compression, parse_size
from composer.live.delta import apply_delta, create_delta
from composer.live.dmsnap import check_chunk_sectors
from composer.live.overlay import merge_overlay, overlay_status
from composer.live.sparsify import human, sparsify
from composer.run import ComposerError


def _chunk_sectors(text: str) -> int:
    """'8' is sectors (as in a dmsetup table); '4K', '16KiB' are bytes."""
    if text.strip().isdigit():
        # No chunk is 10**12 sectors; the bound also keeps int() off a 5,000-digit string.
        if len(text.strip()) > 12:
            raise ComposerError(f"--chunk-size {text[:20]}...: too large")
        sectors = int(text)
    else:
        size = parse_size(text, "--chunk-size")
        if size % 512:
            raise ComposerError(f"--chunk-size {text}: not a multiple of 512 bytes")
        sectors = size // 512
    try:
        check_chunk_sectors(sectors)
    except ComposerError as e:
        raise ComposerError(f"--chunk-size {text}: {e}") from None
    return sectors


def cmd_delta_create(args: argparse.Namespace) -> int:
    d = create_delta(
        args.rootfs, args.output, chunk_sectors=_chunk_sectors(args.chunk_size), source_date_epoch=source_date_epoch(None)
    )  # $SOURCE_DATE_EPOCH, if set
    print(
        f"{args.output}: {d.chunks} chunks, store {d.raw_size} bytes, gzip {d.gz_size} bytes; "
        f"minimized filesystem {d.minimized_size} of {d.origin_size} bytes"
    )
    return 0


def cmd_delta_apply(args: argparse.Namespace) -> int:
    size = apply_delta(args.rootfs, args.delta, args.output)
    print(f"{args.output}: {size} bytes")
    return 0


def cmd_overlay_status(args: argparse.Namespace) -> int:
    st = overlay_status(args.media, args.overlay)
    print(st.to_json() if args.json else st.text())
    return 0


def cmd_overlay_merge(args: argparse.Namespace) -> int:
    r = merge_overlay(
        args.media,
        dry_run=args.dry_run,
        overlay_name=args.overlay,
        repair=args.repair,
        workdir=args.workdir,
        compression=Compression(args.compression) if args.compression else None,
    )
    if r.dry_run:
        print("\n".join(f"would {s}" for s in r.steps))
    elif r.steps:
        print(f"merged {r.overlay} into {r.target} in {r.seconds:.1f}s ({r.old_size} -> {r.new_size} bytes)")
    return 0


def cmd_sparsify(args: argparse.Namespace) -> int:
    r = sparsify(args.image)
    print(f"{args.image}: apparent {human(r.apparent)}, allocated {human(r.allocated_before)} -> {human(r.allocated_after)}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("delta", help="minimized install delta (osmin.img): a dm-snapshot COW store over rootfs.img")
    sub = p.add_subparsers(dest="delta_command", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="minimize ROOTFS (ext4) and store the changed chunks, gzip-compressed")
    c.add_argument("rootfs", metavar="ROOTFS", type=Path)
    c.add_argument("-o", "--output", required=True, type=Path, metavar="OSMIN.IMG.GZ")
    c.add_argument(
        "--chunk-size", default="8", metavar="SECTORS", help="COW chunk size in 512-byte sectors, or with a unit (4K); default 8"
    )
    c.set_defaults(func=cmd_delta_create)
    a = sub.add_parser("apply", help="write the minimized filesystem snapshot(ROOTFS, DELTA) presents, without device-mapper")
    a.add_argument("rootfs", metavar="ROOTFS", type=Path)
    a.add_argument("delta", metavar="DELTA", type=Path, help="osmin.img or osmin.img.gz")
    a.add_argument("-o", "--output", required=True, type=Path, metavar="MINIMAL.IMG")
    a.set_defaults(func=cmd_delta_apply)

    p = subparsers.add_parser("overlay", help="persistent overlay of a live medium: status, merge into squashfs.img")
    sub = p.add_subparsers(dest="overlay_command", required=True, metavar="ACTION")
    s = sub.add_parser("status", help="how full LiveOS/overlay-* is (like dmsetup status)")
    s.add_argument("media", metavar="MEDIA", type=Path, help="the medium's root directory (holding LiveOS/)")
    s.add_argument("--overlay", default=None, metavar="NAME", help="overlay file or directory in LiveOS/ (if several)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_overlay_status)
    mg = sub.add_parser("merge", help="fold the overlay into a new squashfs.img, verify, replace, reset the overlay")
    mg.add_argument("media", metavar="MEDIA", type=Path)
    mg.add_argument("--overlay", default=None, metavar="NAME")
    mg.add_argument("--dry-run", action="store_true", help="check and say what would happen; change nothing")
    mg.add_argument(
        "--workdir", type=Path, default=None, help="extract and build here (default: inside LiveOS/; needed on vfat media)"
    )
    mg.add_argument(
        "--repair", action="store_true", help="let e2fsck -p fix the merged filesystem (journal replay after an unclean shutdown)"
    )
    mg.add_argument("--compression", default=None, choices=[c.value for c in Compression], help="default: the old image's")
    mg.set_defaults(func=cmd_overlay_merge)

    p = subparsers.add_parser("sparsify", help="zero free blocks (ext2/3/4) and turn zero runs into holes")
    p.add_argument("image", metavar="IMG", type=Path)
    p.set_defaults(func=cmd_sparsify)
