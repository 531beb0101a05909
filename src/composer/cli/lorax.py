"""`composer lorax ...` (and the optional `lorax` command): lorax's command line, lorax's meanings.

Every option of lorax's `lorax` command is accepted with lorax's meaning and units and
mapped onto a composer boot.iso build (a LoraxPlan, which composer.pipelines.lorax runs).
What composer cannot do the way lorax does is still accepted and named in one warning
line (never a usage error): Pungi's buildinstall phase and people's scripts run unchanged.

The options that make a Config field are rows of composer.cli.options, with lorax's
names, dests and defaults; each row whose lorax option differs from composer's in units
or meaning says how (`differs`: --rootfs-size in GiB, lorax's --rootfs-type names,
--dracut-arg replacing the defaults, --workdir/--tmp and their trust rule, nogpgcheck
implied by --source). lorax's own options:
  --config FILE          lorax.conf: [lorax] sharedir, logdir; [compression] type, args, bcj;
                         [compression.erofs]; [output]; [templates]
  --sharedir DIR         a template set, or a directory with templates.d/ (the first is used)
  --tmp                  composer's work directory is made inside (a fresh unpredictable
                         name), unless --workdir is given; refused when a user other than
                         root or composer's own could change what is in it. Default
                         /var/tmp/lorax, or /var/tmp for an ordinary user when that is
                         root's (lorax ran there as root)
  -V                     prints lorax's style of version and exits

Errors are raised, not printed: composer.cli runs `composer lorax` and the `lorax`
command the way it runs every subcommand (signals, one-line errors, cleanup).
"""

from __future__ import annotations

import argparse
import configparser
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from composer import __version__
from composer.cli.options import LORAX_DRACUT_DEFAULT, PASS_THROUGH_OPTIONS, ROOTFS_MAP, add_lorax_options, config_values
from composer.config import Compression, Config, parse_assignments
from composer.pipelines.lorax import LoraxPlan, compose_lorax
from composer.run import ComposerError, output_path

__all__ = ["LORAX_DRACUT_DEFAULT", "lorax_parser", "plan_from_argv", "run_lorax"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one composer-style line, exit 2 as argparse does
        print(f"composer lorax: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def lorax_parser(prog: str = "composer lorax") -> argparse.ArgumentParser:
    """lorax's options, names, defaults and units (lorax 40-46, cmdline.lorax_parser), in
    lorax's order: those that make a Config field come from the options table."""
    p = _Parser(prog=prog, description="Create the Anaconda boot.iso (lorax's command line, built by composer)")
    req = p.add_argument_group("required arguments")
    add_lorax_options(req, "product", "version", "release", "sources", "repofiles")
    opt = p.add_argument_group("optional arguments")
    add_lorax_options(opt, "mirrorlists", "variant", "bugurl", "isfinal")
    opt.add_argument("-c", "--config", default="/etc/lorax/lorax.conf", metavar="CONFIGFILE")
    add_lorax_options(opt, "proxy", "installpkgs", "excludepkgs", "arch")
    opt.add_argument("--volid", default=None, metavar="VOLID")
    opt.add_argument("--macboot", action="store_true", default=False, dest="domacboot")
    opt.add_argument("--nomacboot", action="store_false", dest="domacboot")
    opt.add_argument("--noupgrade", action="store_false", default=True, dest="doupgrade")
    opt.add_argument("--logfile", default="./lorax.log", type=Path)
    opt.add_argument("--tmp", default=None)  # the work directory's, without --workdir (options._lorax_workdir)
    add_lorax_options(opt, "cachedir", "workdir", "force", "add_templates", "add_template_vars")
    opt.add_argument("--add-arch-template", dest="add_arch_templates", action="append", default=[], type=Path)
    opt.add_argument("--add-arch-template-var", dest="add_arch_template_vars", action="append", default=[])
    opt.add_argument("--noverify", action="store_false", default=True, dest="verify")
    opt.add_argument("--sharedir", metavar="SHAREDIR", type=Path, default=None)
    add_lorax_options(opt, "enablerepos", "disablerepos", "rootfs_size", "sslverify")
    opt.add_argument("--dnfplugin", action="append", default=[], dest="dnfplugins")
    opt.add_argument("--squashfs-only", action="store_true", help="ignored, as in lorax")
    add_lorax_options(opt, "branding", "rootfs_type")
    dr = p.add_argument_group("dracut arguments")
    add_lorax_options(dr, "dracut_conf", "dracut_args")
    p.add_argument("-V", action="version", version=f"lorax-{__version__} (composer {__version__})")
    add_lorax_options(p, "outdir")
    return p


@dataclass(frozen=True)
class LoraxConf:
    """What composer reads from lorax.conf."""

    sharedir: Path | None = None
    logdir: Path | None = None
    compression: str = "xz"
    compression_args: tuple[str, ...] = ()
    bcj: bool = True
    ignored: tuple[str, ...] = ()  # settings composer does not honour (for the warning line)


_CONF_DEFAULTS = {
    ("lorax", "debug"): "1",
    ("lorax", "sharedir"): "/usr/share/lorax",
    ("lorax", "logdir"): "/var/log/lorax",
    ("output", "colors"): "1",
    ("output", "encoding"): "utf-8",
    ("output", "ignorelist"): "/usr/share/lorax/ignorelist",
    ("templates", "ramdisk"): "ramdisk.ltmpl",
    ("compression", "type"): "xz",
    ("compression", "args"): "",
    ("compression", "bcj"): "on",
    ("compression.erofs", "type"): "lzma",
    ("compression.erofs", "args"): "-E dedupe,all-fragments -C 131072 --all-time",
}


def read_lorax_conf(path: Path, *, given: bool) -> LoraxConf:
    """lorax.conf; a missing default /etc/lorax/lorax.conf means lorax's built-in defaults."""
    cp = configparser.ConfigParser()
    if path.is_file():
        try:
            cp.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as e:
            raise ComposerError(f"--config {path}: not a lorax.conf: {str(e).splitlines()[0]}") from None
    elif given:
        raise ComposerError(f"--config {path}: no such file")

    def get(section: str, key: str) -> str:
        return cp.get(section, key, fallback=_CONF_DEFAULTS.get((section, key), "")).strip()

    ignored = []
    for section in cp.sections():
        for key in cp[section]:
            value = cp.get(section, key).strip()
            if (section, key) in (
                ("lorax", "sharedir"),
                ("lorax", "logdir"),
                ("compression", "type"),
                ("compression", "args"),
                ("compression", "bcj"),
                ("lorax", "debug"),
                ("output", "colors"),
                ("output", "encoding"),
            ):
                continue
            if value != _CONF_DEFAULTS.get((section, key)):
                ignored.append(f"[{section}] {key}")
    try:
        bcj = cp.getboolean("compression", "bcj", fallback=True)
    except ValueError:
        raise ComposerError(f"--config {path}: [compression] bcj: expected on/off, not {get('compression', 'bcj')!r}") from None
    sharedir = get("lorax", "sharedir")
    return LoraxConf(
        sharedir=Path(sharedir) if cp.has_option("lorax", "sharedir") else None,
        logdir=Path(get("lorax", "logdir")) if cp.has_option("lorax", "logdir") else None,
        compression=get("compression", "type") or "xz",
        compression_args=tuple(get("compression", "args").split()),
        bcj=bcj,
        ignored=tuple(ignored),
    )


def find_templates(sharedir: Path) -> Path:
    """lorax's rule: a directory with templates.d/ means its first (lowest) entry."""
    d = sharedir / "templates.d"
    if d.is_dir():
        entries = sorted(p for p in d.iterdir())
        if entries:
            return entries[0]
    return sharedir


def _glue_dracut_args(argv: Sequence[str]) -> list[str]:
    """`--dracut-arg --xz` -> `--dracut-arg=--xz` (the value starts with '-')."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in PASS_THROUGH_OPTIONS:
            v = next(it, None)
            out.append(a if v is None else f"{a}={v}")
        else:
            out.append(a)
    return out


# (argparse dest, what the warning calls it) of lorax options composer accepts but does not honour.
_NOT_HONOURED = (
    ("dnfplugins", "--dnfplugin (composer runs dnf without plugins)"),
    ("domacboot", "--macboot (no Mac boot image)"),
)


def plan_from_argv(argv: Sequence[str]) -> LoraxPlan:
    """Parse lorax's argv (exit 2 on a usage error, as lorax) and map it onto composer."""
    args = lorax_parser().parse_args(_glue_dracut_args(argv))
    conf = read_lorax_conf(Path(args.config), given=any(a in ("-c", "--config") or a.startswith("--config=") for a in argv))
    _check_args(args)
    warnings, compression = _not_honoured(args, conf)
    sharedir = args.sharedir if args.sharedir is not None else conf.sharedir
    templatedir = None
    if sharedir is not None:
        templatedir = find_templates(sharedir)
        if not templatedir.is_dir():
            raise ComposerError(f"--sharedir {sharedir}: no such directory")
    return LoraxPlan(
        config=_lorax_config(args, compression),
        volid=args.volid,
        arch_templates=tuple(args.add_arch_templates),
        arch_template_vars=parse_assignments(args.add_arch_template_vars, "--add-arch-template-var"),
        templatedir=templatedir,
        logfile=output_path(args.logfile),  # a link at its name is refused when opened, never followed
        domacboot=args.domacboot,
        doupgrade=args.doupgrade,
        skip_branding=args.skip_branding,
        lorax_rootfs_type=args.rootfs_type,
        warnings=tuple(warnings),
    )


def _check_args(args: argparse.Namespace) -> None:
    """lorax's refusals of option combinations and values."""
    if not args.source and not args.repos and not args.mirrorlist:
        raise ComposerError("lorax: give at least one --source, --mirrorlist or --repo")
    if args.dracut_args and args.dracut_conf:
        raise ComposerError("lorax: --dracut-arg and --dracut-conf cannot be used together")
    if args.dracut_conf and not args.dracut_conf.is_file():
        raise ComposerError(f"--dracut-conf {args.dracut_conf}: no such file")
    if args.rootfs_size <= 0:
        raise ComposerError(f"--rootfs-size {args.rootfs_size}: GiB, at least 1")


def _not_honoured(args: argparse.Namespace, conf: LoraxConf) -> tuple[list[str], Compression]:
    """Options composer accepts but does not act on the way lorax does (the one warning
    line), and the compression lorax.conf asks for (xz when composer has not got it)."""
    warnings = [label for dest, label in _NOT_HONOURED if getattr(args, dest)]
    if not args.verify:
        warnings.append("--noverify (composer always checks the tree)")
    warnings += [f"lorax.conf {k}" for k in conf.ignored]
    differs = ROOTFS_MAP[args.rootfs_type][1]
    if differs:
        warnings.append(differs)
    try:
        compression = Compression(conf.compression)
    except ValueError:
        compression = Compression.XZ
        warnings.append(f"lorax.conf [compression] type {conf.compression} (xz used)")
    if conf.compression_args:
        warnings.append("lorax.conf [compression] args")
    # lorax does not check signatures of --source repositories (dnf's default for added
    # repos); a --repo file says for itself, which composer cannot honour beside --source.
    if (args.source or args.mirrorlist) and args.repos:
        warnings.append("gpgcheck of --repo files (not checked beside --source)")
    return warnings, compression


def _lorax_config(args: argparse.Namespace, compression: Compression) -> Config:
    """The composer build a lorax command line asks for: the options table's lorax
    spellings, and the compression lorax.conf asks for."""
    return Config(**config_values(args, "lorax"), compression=compression)


def run_lorax(argv: Sequence[str]) -> int:
    """`composer lorax ARGS` and the `lorax` command (both through composer.cli.main).

    Usage errors exit 2 as lorax's do; other errors are raised for composer.cli to make
    one line of."""
    return compose_lorax(plan_from_argv(argv))
