"""`composer netboot`: the command line of netboot trees (see composer.pipelines.netboot)."""

from __future__ import annotations

import argparse

from composer.cli.compose import add_boot_options, add_compose_options, boot_config
from composer.config import Config
from composer.pipelines.netboot import NetbootOptions, check_boot_configs, compose_netboot, normalize_url, parse_nbd
from composer.preflight import check_compose_inputs


def cmd_netboot(args: argparse.Namespace) -> int:
    cfg, opts = prepare_netboot(args)
    compose_netboot(cfg, opts)
    return 0


def prepare_netboot(args: argparse.Namespace) -> tuple[Config, NetbootOptions]:
    """Every check of `composer netboot` before any work, boot configs rendered included."""
    cfg, kernel_args = boot_config(args, args.netboot_logfile)
    nbd = parse_nbd(args.nbd, cfg.product, cfg.version) if args.nbd is not None else None
    opts = NetbootOptions(url=normalize_url(args.url), split=args.split or nbd is not None, kernel_args=kernel_args, nbd=nbd)
    check_compose_inputs(cfg, "netboot", ks=args.ks)
    check_boot_configs(cfg, opts)
    return cfg, opts


def register(subparsers) -> argparse.ArgumentParser:
    """Add `netboot` to composer's subcommands."""
    p = subparsers.add_parser("netboot", help="compose a PXE/HTTP netboot tree: kernels, initrds, pxelinux/GRUB/iPXE configs")
    add_compose_options(p)
    p.add_argument("--url", required=True, help="where the tree will be served, e.g. http://server/path/")
    p.add_argument(
        "--split", action="store_true", help="small initrd + install.img fetched at boot (default: one big initrd per kernel)"
    )
    p.add_argument(
        "--nbd",
        metavar="HOST[:PORT]",
        help="split, with install.img read on demand from this NBD server (port 10809 by default) instead of"
        " downloaded into RAM; the tree's nbd-server.conf exports it",
    )
    add_boot_options(p, "netboot_logfile")
    p.set_defaults(func=cmd_netboot, prepare=prepare_netboot)
    return p
