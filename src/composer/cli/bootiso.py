"""`composer boot-iso`: the command line of installer media (see composer.pipelines.bootiso)."""

from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.compose import add_boot_options, add_compose_options, boot_config
from composer.config import Config, parse_assignments
from composer.images.efiboot import EFI_ARCH_NAMES
from composer.images.iso import check_volid, default_volid
from composer.pipelines.bootiso import BIOS_LOADERS, MediaOptions, check_boot_menus, compose_boot_iso
from composer.preflight import check_compose_inputs, check_template_vars
from composer.run import ComposerError


def cmd_boot_iso(args: argparse.Namespace) -> int:
    cfg, opts = prepare_boot_iso(args)
    compose_boot_iso(cfg, opts)
    return 0


def prepare_boot_iso(args: argparse.Namespace) -> tuple[Config, MediaOptions]:
    """Every check of `composer boot-iso` before any work, boot menus rendered included."""
    cfg, kernel_args = boot_config(args, args.bootiso_logfile)
    if args.volid is not None:
        volid = check_volid(args.volid)
    else:
        volid = default_volid(cfg.product, cfg.version, cfg.arch)
        try:
            check_volid(volid)
        except ComposerError as e:
            # The user gave no --volid: say where this one came from.
            raise ComposerError(
                f"the default volume id {str(e).removeprefix('--volid ')} "
                "(made from --product, --version, --buildarch); give --volid"
            ) from None
    if cfg.arch not in EFI_ARCH_NAMES:
        # Found out only after the runtime build otherwise (make_media).
        raise ComposerError(
            f"--buildarch {cfg.arch}: boot-iso has no UEFI boot for this architecture "
            f"(known: {', '.join(sorted(EFI_ARCH_NAMES))})"
        )
    opts = MediaOptions(
        volid=volid,
        bios_loader=args.bios_loader,
        kernel_args=kernel_args,
        arch_templates=tuple(args.add_arch_template),
        arch_template_vars=parse_assignments(args.add_arch_template_var, "--add-arch-template-var"),
    )
    # These reach the boot menus too, where quotes and $ are syntax.
    check_template_vars("--add-arch-template-var", opts.arch_template_vars, menu=True)
    check_compose_inputs(cfg, "boot-iso", ks=args.ks)
    check_boot_menus(cfg, opts)
    return cfg, opts


def register(subparsers) -> argparse.ArgumentParser:
    """Add `boot-iso` to composer's subcommands."""
    p = subparsers.add_parser("boot-iso", help="compose installer media: boot.iso (BIOS + UEFI), install.img, pxeboot, .treeinfo")
    add_compose_options(p)
    p.add_argument("--volid", default=None, help="ISO volume id (default <product>-<version>-<arch>, at most 32 characters)")
    p.add_argument("--bios-loader", default="grub2", choices=BIOS_LOADERS, help="BIOS El Torito boot loader (default grub2)")
    p.add_argument(
        "--add-arch-template",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="extra command template run on the media tree before the images are made (repeatable)",
    )
    p.add_argument(
        "--add-arch-template-var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="variable for the boot config and arch templates (repeatable)",
    )
    add_boot_options(p, "bootiso_logfile")
    p.set_defaults(func=cmd_boot_iso, prepare=prepare_boot_iso)
    return p
