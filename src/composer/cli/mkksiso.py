"""`composer mkksiso`: the command line of the remastering tool (see composer.pipelines.mkksiso)."""

from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.common import source_date_epoch
from composer.pipelines.mkksiso import MkksisoOptions, remaster
from composer.preflight import check_kernel_args
from composer.run import ComposerError


def options_from_args(args: argparse.Namespace) -> MkksisoOptions:
    ks = args.ks
    if args.ks_pos is not None:
        # mkksiso's older form: KICKSTART INPUT OUTPUT
        if ks is not None:
            raise ComposerError("give the kickstart either as --ks or before INPUT, not both")
        ks = args.ks_pos
    # Each value on its own, so that an empty or bad one is named as given.
    for value in args.cmdline:
        check_kernel_args("--cmdline", value)
    for value in args.rm_args:
        check_kernel_args("--rm-args", value)
    return MkksisoOptions(
        input=args.input,
        output=args.output,
        ks=ks,
        add=tuple(args.add),
        cmdline=" ".join(args.cmdline),
        rm_args=tuple(args.rm_args),
        volid=args.volid,
        updates=args.updates,
        replace=tuple(tuple(r) for r in args.replace),
        skip_efiboot=args.skip_mkefiboot,
        force=args.force,
        implant_md5=not args.no_md5sum,
        source_date_epoch=source_date_epoch(args.source_date_epoch),
    )


def cmd_mkksiso(args: argparse.Namespace) -> int:
    remaster(options_from_args(args))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add `mkksiso` to composer's subcommands."""
    p = subparsers.add_parser(
        "mkksiso",
        help="remaster a boot.iso: add a kickstart and files, edit kernel arguments and the volume id (no root)",
        description="Remaster an existing boot ISO without root, loop devices or mounts: xorriso keeps its BIOS, "
        "UEFI and USB (hybrid) boot layout; every boot menu (GRUB, isolinux, the one in efiboot.img) "
        "gets the changes.",
    )
    p.add_argument("ks_pos", nargs="?", type=Path, metavar="KICKSTART", help="same as --ks (mkksiso's older form)")
    p.add_argument("input", type=Path, metavar="INPUT", help="the ISO to remaster (left as it is)")
    p.add_argument("output", type=Path, metavar="OUTPUT", help="the new ISO (written under a temporary name, then renamed)")
    p.add_argument(
        "--ks",
        type=Path,
        default=None,
        metavar="FILE",
        help="kickstart to put at the ISO's root; adds inst.ks=hd:LABEL=<volid>:/<name>",
    )
    p.add_argument(
        "-a",
        "--add",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="file or directory to put at the ISO's root (repeatable)",
    )
    p.add_argument(
        "-c",
        "--cmdline",
        action="append",
        default=[],
        metavar="ARGS",
        help="kernel arguments to add to every boot entry (repeatable)",
    )
    p.add_argument(
        "-r",
        "--rm-args",
        action="append",
        default=[],
        metavar="ARGS",
        help="space-separated kernel arguments to remove: NAME removes every NAME and NAME=..., "
        "NAME=VALUE only that one (repeatable)",
    )
    p.add_argument("-V", "--volid", default=None, help="new volume id (menus follow: LABEL=, CDLABEL=, search --label)")
    p.add_argument(
        "-u",
        "--updates",
        type=Path,
        default=None,
        metavar="IMG",
        help="updates image to put at the ISO's root; adds inst.updates=hd:LABEL=<volid>:/<name>",
    )
    p.add_argument(
        "-R",
        "--replace",
        nargs=2,
        action="append",
        default=[],
        metavar=("FROM", "TO"),
        help="replace text in every boot menu (repeatable)",
    )
    p.add_argument("--skip-mkefiboot", action="store_true", help="leave efiboot.img (the UEFI boot image and its menu) as it is")
    p.add_argument("--no-md5sum", action="store_true", help="do not implant an MD5 checksum (implantisomd5)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (once the new ISO is complete)")
    p.add_argument(
        "--source-date-epoch",
        type=int,
        default=None,
        metavar="SECONDS",
        help="reproducible output: added and edited files dated at this time (default: $SOURCE_DATE_EPOCH)",
    )
    p.set_defaults(func=cmd_mkksiso)
    return p
