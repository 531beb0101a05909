"""`composer netboot`: the command line of netboot trees (see composer.netboot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.compose import add_compose_options, config_with_kernel_args, own_logfile
from composer.config import Config
from composer.kickstart import add_ks_option
from composer.netboot import NetbootOptions, check_boot_configs, compose_netboot, normalize_url
from composer.preflight import check_compose_inputs, check_template_vars


def cmd_netboot(args: argparse.Namespace) -> int:
    cfg, opts = prepare_netboot(args)
    compose_netboot(cfg, opts)
    return 0


def prepare_netboot(args: argparse.Namespace) -> tuple[Config, NetbootOptions]:
    """Every check of `composer netboot` before any work, boot configs rendered included."""
    own_logfile(args.netboot_logfile)
    url = normalize_url(args.url)
    cfg, ks = config_with_kernel_args(args)
    check_template_vars("--add-template-var", cfg.add_template_vars, menu=True)  # the boot configs get them too
    opts = NetbootOptions(url=url, split=args.split,
                          kernel_args=tuple(ks.kernel_args if ks else ()) + tuple(args.kernel_arg))
    check_compose_inputs(cfg, "netboot", ks=args.ks)
    check_boot_configs(cfg, opts)
    return cfg, opts


def register(subparsers) -> argparse.ArgumentParser:
    """Add `netboot` to composer's subcommands."""
    p = subparsers.add_parser("netboot", help="compose a PXE/HTTP netboot tree: kernels, initrds, pxelinux/GRUB/iPXE configs")
    add_compose_options(p)
    p.add_argument("--url", required=True, help="where the tree will be served, e.g. http://server/path/")
    p.add_argument("--split", action="store_true",
                   help="small initrd + install.img fetched at boot (default: one big initrd per kernel)")
    p.add_argument("--kernel-arg", action="append", default=[], metavar="ARG",
                   help="extra kernel argument for every entry (repeatable)")
    add_ks_option(p)
    p.add_argument("--logfile", dest="netboot_logfile", type=Path, default=None, help="write a full log here")
    p.set_defaults(func=cmd_netboot, prepare=prepare_netboot)
    return p
