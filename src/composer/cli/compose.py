"""The options every compose shares (runtime, boot-iso, netboot), the Config they make,
and `composer runtime`."""

from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.common import check_logfile
from composer.cli.options import add_composer_options, config_values
from composer.config import Config, DnfChoice
from composer.dnf import find_dnf
from composer.kickstart import add_ks_option, config_with_kickstart
from composer.pipelines.runtime import compose_runtime
from composer.preflight import check_compose_inputs, check_config_values, check_kernel_arg, check_template_vars
from composer.run import set_logging


def add_compose_options(p: argparse.ArgumentParser) -> None:
    """The options every compose (runtime, boot-iso, netboot) shares: composer's spellings
    of the options table (composer.cli.options)."""
    add_composer_options(p)


def config_from_args(args: argparse.Namespace) -> Config:
    """The build's Config; every value is checked for its kind (preflight.check_config_values)."""
    cfg = Config(**config_values(args, "composer"))
    check_config_values(cfg)
    if cfg.dnf is not DnfChoice.AUTO or cfg.dnf_root is not None:
        find_dnf(cfg.dnf, cfg.dnf_root)  # a dnf that is not there fails now, not after the setup
    return cfg


def add_boot_options(p: argparse.ArgumentParser, logfile_dest: str) -> None:
    """Options of the composes that write boot menus (boot-iso, netboot), after their own."""
    p.add_argument(
        "--kernel-arg", action="append", default=[], metavar="ARG", help="extra kernel argument for every boot entry (repeatable)"
    )
    add_ks_option(p)
    p.add_argument("--logfile", dest=logfile_dest, type=Path, default=None, help="write a full log here")


def boot_config(args: argparse.Namespace, logfile: Path | None) -> tuple[Config, tuple[str, ...]]:
    """boot-iso's and netboot's Config and the kernel arguments of their menus (the
    kickstart's bootloader --append, then --kernel-arg), every value checked. Their own
    --logfile (after the subcommand) is checked, then logged to."""
    check_logfile(logfile, "--logfile")
    if logfile is not None:
        set_logging(logfile=logfile)
    cfg, ks = config_with_kickstart(config_from_args(args), args.ks)
    for arg in args.kernel_arg:
        check_kernel_arg("--kernel-arg", arg)
    # Template variables reach the boot menus too, where quotes and $ are syntax.
    check_template_vars("--add-template-var", cfg.add_template_vars, menu=True)
    return cfg, tuple(ks.kernel_args if ks else ()) + tuple(args.kernel_arg)


def prepare_runtime(args: argparse.Namespace) -> Config:
    """Every check of `composer runtime` that runs before any work (reads only)."""
    cfg, _ = config_with_kickstart(config_from_args(args), args.ks)
    check_compose_inputs(cfg, "runtime", ks=args.ks)
    return cfg


def cmd_runtime(args: argparse.Namespace) -> int:
    cfg = prepare_runtime(args)
    compose_runtime(cfg)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("runtime", help="compose a runtime: big initrd (boots from RAM), install.img, manifest")
    add_compose_options(p)
    add_ks_option(p)
    p.set_defaults(func=cmd_runtime, prepare=prepare_runtime)
