"""The options every compose shares (runtime, boot-iso, netboot), the Config they make,
and `composer runtime`."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from composer.cli.common import check_logfile, source_date_epoch
from composer.config import DEFAULT_CACHEDIR, Compression, Config, DnfChoice, RootfsType, parse_assignments, parse_size
from composer.dnf import DNF_ROOT_ENV, find_dnf, proxy_url
from composer.kickstart import add_ks_option, config_with_kickstart
from composer.pipelines.runtime import compose_runtime
from composer.preflight import check_compose_inputs, check_config_values, check_kernel_arg, check_template_vars
from composer.run import ComposerError, set_logging


def add_compose_options(p: argparse.ArgumentParser) -> None:
    """The options every compose (runtime, boot-iso, netboot) shares."""
    _product_options(p)
    _repository_options(p)
    _package_options(p)
    _image_options(p)
    _dnf_options(p)
    _build_options(p)


def _product_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", type=Path, help="output directory (refused if it exists, unless --force)")
    p.add_argument("-p", "--product", required=True, help="product name; selects templates/<product>")
    p.add_argument("-v", "--version", required=True, help="product version (dnf releasever)")
    p.add_argument("-r", "--release", default="", help="release string")
    p.add_argument("-t", "--variant", default="", help="variant name")
    p.add_argument("-b", "--bugurl", default="", help="bug reporting URL")
    p.add_argument("--isfinal", action="store_true", help="this is a final release")
    p.add_argument("--buildarch", default=platform.machine(), help="architecture to build for (default: this host's)")


def _repository_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--source", action="append", default=[], metavar="URL", help="package repository URL (repeatable)")
    p.add_argument("--repo", action="append", default=[], type=Path, metavar="FILE", help="dnf .repo file (repeatable)")
    p.add_argument(
        "-m",
        "--mirrorlist",
        action="append",
        default=[],
        metavar="URL",
        help="mirrorlist URL of a package repository (repeatable)",
    )
    p.add_argument(
        "--enablerepo",
        action="append",
        default=[],
        metavar="GLOB",
        help="enable these repositories of the --repo files (repeatable)",
    )
    p.add_argument(
        "--disablerepo",
        action="append",
        default=[],
        metavar="GLOB",
        help="disable these repositories of the --repo files, after --enablerepo (repeatable)",
    )
    p.add_argument("--proxy", default=None, metavar="URL", help="proxy for every repository, e.g. http://host:3128")
    p.add_argument("--noverifyssl", action="store_true", help="do not verify the repositories' TLS certificates")


def _package_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i", "--installpkgs", action="append", default=[], metavar="PKG", help="extra package (glob) to install (repeatable)"
    )
    p.add_argument(
        "-e", "--excludepkgs", action="append", default=[], metavar="PKG", help="package (glob) never to install (repeatable)"
    )
    p.add_argument(
        "--add-template",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="extra template run after postinstall (repeatable)",
    )
    p.add_argument(
        "--add-template-var", action="append", default=[], metavar="NAME=VALUE", help="variable for the templates (repeatable)"
    )


def _image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rootfs-type",
        default="btrfs",
        choices=[t.value for t in RootfsType],
        help="filesystem of LiveOS/rootfs.img (squashfs: no rootfs.img)",
    )
    p.add_argument(
        "--rootfs-size", default=None, metavar="SIZE", help="free room in rootfs.img for the runtime's writes, e.g. 512M (sparse)"
    )
    p.add_argument("--compression", default="xz", choices=[c.value for c in Compression], help="squashfs compressor")
    p.add_argument("--dracut-arg", action="append", default=[], metavar="ARG", help="extra dracut argument (repeatable)")
    p.add_argument("--dracut-conf", type=Path, default=None, metavar="FILE", help="extra dracut configuration file")


def _dnf_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nogpgcheck", action="store_true", help="do not check package signatures")
    p.add_argument(
        "--dnf",
        default="auto",
        choices=[c.value for c in DnfChoice],
        help="dnf command line to drive (default: whatever `dnf` is; dnf5 on Fedora 41+)",
    )
    p.add_argument(
        "--dnf-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="run dnf and rpm from this root directory (bubblewrap), e.g. one with dnf5 made by "
        "scripts/dnf5-root (default: $COMPOSER_DNF_ROOT, else the host's dnf)",
    )


def _build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=None, help="where the tree is built (default: /var/tmp)")
    p.add_argument(
        "--cachedir",
        type=Path,
        default=DEFAULT_CACHEDIR,
        help=f"persistent cache (dnf packages, trees; default: {DEFAULT_CACHEDIR})",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep the work directory (for debugging)")
    p.add_argument("--force", action="store_true", help="replace OUTDIR once the new output is complete")
    p.add_argument(
        "--source-date-epoch",
        type=int,
        default=None,
        metavar="SECONDS",
        help="reproducible build: timestamps clamped to this (default: $SOURCE_DATE_EPOCH if set)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not reuse a cached populated tree")
    p.add_argument(
        "--osmin", action="store_true", help="also ship LiveOS/osmin.img.gz, a minimized-install delta of rootfs.img (ext4 only)"
    )


def _dnf_root(option: Path | None) -> Path | None:
    """--dnf-root, else $COMPOSER_DNF_ROOT, as an absolute directory."""
    name = "--dnf-root"
    if option is None:
        env = os.environ.get(DNF_ROOT_ENV, "")
        if not env:
            return None
        option, name = Path(env), DNF_ROOT_ENV
    if not option.is_dir():
        raise ComposerError(f"{name} {option}: no such directory (scripts/dnf5-root makes a root with dnf5)")
    return option.resolve()


def config_from_args(args: argparse.Namespace) -> Config:
    """The build's Config; every value is checked for its kind (preflight.check_config_values)."""
    cfg = _config(args)
    check_config_values(cfg)
    if cfg.dnf is not DnfChoice.AUTO or cfg.dnf_root is not None:
        find_dnf(cfg.dnf, cfg.dnf_root)  # a dnf that is not there fails now, not after the setup
    return cfg


def _config(args: argparse.Namespace) -> Config:
    return Config(
        product=args.product,
        version=args.version,
        outdir=args.outdir,
        release=args.release,
        sources=tuple(args.source),
        repofiles=tuple(p.resolve() for p in args.repo),
        mirrorlists=tuple(args.mirrorlist),
        proxy=proxy_url(args.proxy) if args.proxy else None,
        sslverify=not args.noverifyssl,
        enablerepos=tuple(args.enablerepo),
        disablerepos=tuple(args.disablerepo),
        variant=args.variant,
        bugurl=args.bugurl,
        isfinal=args.isfinal,
        arch=args.buildarch,
        installpkgs=tuple(args.installpkgs),
        excludepkgs=tuple(args.excludepkgs),
        add_templates=tuple(args.add_template),
        add_template_vars=parse_assignments(args.add_template_var),
        rootfs_type=RootfsType(args.rootfs_type),
        rootfs_size=parse_size(args.rootfs_size, "--rootfs-size") if args.rootfs_size is not None else None,
        compression=Compression(args.compression),
        dracut_args=tuple(args.dracut_arg),
        dracut_conf=args.dracut_conf,
        nogpgcheck=args.nogpgcheck,
        dnf=DnfChoice(args.dnf),
        dnf_root=_dnf_root(args.dnf_root),
        workdir=args.workdir,
        cachedir=args.cachedir.resolve(),
        force=args.force,
        keep_workdir=args.keep_workdir,
        source_date_epoch=source_date_epoch(args.source_date_epoch),
        use_cache=not args.no_cache,
        osmin=args.osmin,
    )


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
