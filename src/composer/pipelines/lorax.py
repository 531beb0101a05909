"""`composer lorax ...` (and the optional `lorax` command): lorax's command line, lorax's meanings.

Every option of lorax's `lorax` command is accepted with lorax's meaning and units and
mapped onto a composer boot.iso build. What composer cannot do the way lorax does is
still accepted and named in one warning line (never a usage error): Pungi's
buildinstall phase and people's scripts run unchanged.

Differences in units and meaning from composer's own command line:
  --rootfs-size N        GiB (lorax), composer's --rootfs-size takes bytes with suffixes
  --rootfs-type          lorax's squashfs|squashfs-ext4|erofs|erofs-ext4, and composer's btrfs
  --dracut-arg           replaces the default dracut arguments (lorax), does not add to them
  --config FILE          lorax.conf: [lorax] sharedir, logdir; [compression] type, args, bcj;
                         [compression.erofs]; [output]; [templates]
  --sharedir DIR         a template set, or a directory with templates.d/ (the first is used)
  --tmp, --workdir       composer's work directory is made inside (a fresh unpredictable
                         name); refused when a user other than root or composer's own could
                         change what is in it (a link into another user's directory)
  -V                     prints lorax's style of version and exits

Errors are raised, not printed: composer.cli runs `composer lorax` and the `lorax`
command the way it runs every subcommand (signals, one-line errors, cleanup).
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import datetime
import os
import platform
import pwd
import shlex
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from composer import __version__
from composer.config import DEFAULT_CACHEDIR, Compression, Config, RootfsType, parse_assignments
from composer.dnf import proxy_url
from composer.images.iso import check_volid, default_volid
from composer.images.sparse import copy_sparse
from composer.lorax import logs as loraxlogs
from composer.lorax.check import check_sharedir
from composer.lorax.logs import derive_logs, error_lines, read_log
from composer.outputs.media import copy_file
from composer.outputs.treeinfo import write_discinfo, write_treeinfo
from composer.pipelines.bootiso import EFI_ARCH_NAMES, MediaOptions, compose_boot_iso
from composer.pipelines.runtime import build_runtime, compose_dirs
from composer.preflight import check_compose_inputs, check_dir_creatable, check_outputs_apart
from composer.product import template_dir
from composer.run import ComposerError, debug, info, output_path, run, set_logging
from composer.templates import Arch, Product, TemplateRunner, lorax_variables
from composer.userns import inside

__all__ = ["LoraxPlan", "lorax_parser", "plan_from_argv", "run_lorax"]

# lorax's DRACUT_DEFAULT, less "--add fips" (no FIPS module in every distribution's dracut).
LORAX_DRACUT_DEFAULT = ("--xz", "--install", "/.buildstamp", "--no-early-microcode")
LORAX_ROOTFS_TYPES = ("squashfs", "squashfs-ext4", "erofs", "erofs-ext4")

# lorax rootfs type -> (composer's rootfs type, what differs, or "" when it is the same layout)
ROOTFS_MAP: dict[str, tuple[RootfsType, str]] = {
    "squashfs": (RootfsType.SQUASHFS, ""),
    "squashfs-ext4": (RootfsType.EXT4, ""),
    "erofs": (
        RootfsType.EROFS,
        ("--rootfs-type erofs: install.img is squashfs holding LiveOS/rootfs.img (erofs), not a bare erofs image"),
    ),
    "erofs-ext4": (RootfsType.EXT4, ("--rootfs-type erofs-ext4: LiveOS/rootfs.img (ext4) is wrapped in squashfs, not erofs")),
    "btrfs": (RootfsType.BTRFS, ""),  # composer's own
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one composer-style line, exit 2 as argparse does
        print(f"composer lorax: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def lorax_parser(prog: str = "composer lorax") -> argparse.ArgumentParser:
    """lorax's options, names, defaults and units (lorax 40-46, cmdline.lorax_parser)."""
    p = _Parser(prog=prog, description="Create the Anaconda boot.iso (lorax's command line, built by composer)")
    req = p.add_argument_group("required arguments")
    req.add_argument("-p", "--product", required=True, metavar="PRODUCT")
    req.add_argument("-v", "--version", required=True, metavar="VERSION")
    req.add_argument("-r", "--release", required=True, metavar="RELEASE")
    req.add_argument("-s", "--source", action="append", default=[], metavar="REPOSITORY")
    req.add_argument("--repo", action="append", default=[], dest="repos", metavar="REPOSITORY", type=Path)
    opt = p.add_argument_group("optional arguments")
    opt.add_argument("-m", "--mirrorlist", action="append", default=[], metavar="REPOSITORY")
    opt.add_argument("-t", "--variant", default="", metavar="VARIANT")
    opt.add_argument("-b", "--bugurl", default="your distribution provided bug reporting tool", metavar="URL")
    opt.add_argument("--isfinal", action="store_true", default=False)
    opt.add_argument("-c", "--config", default="/etc/lorax/lorax.conf", metavar="CONFIGFILE")
    opt.add_argument("--proxy", default=None, metavar="HOST")
    opt.add_argument("-i", "--installpkgs", action="append", default=[], metavar="PACKAGE")
    opt.add_argument("-e", "--excludepkgs", action="append", default=[], metavar="PACKAGE")
    opt.add_argument("--buildarch", default=None, metavar="ARCH")
    opt.add_argument("--volid", default=None, metavar="VOLID")
    opt.add_argument("--macboot", action="store_true", default=False, dest="domacboot")
    opt.add_argument("--nomacboot", action="store_false", dest="domacboot")
    opt.add_argument("--noupgrade", action="store_false", default=True, dest="doupgrade")
    opt.add_argument("--logfile", default="./lorax.log", type=Path)
    opt.add_argument("--tmp", default="/var/tmp/lorax")
    opt.add_argument("--cachedir", default=None, type=Path)
    opt.add_argument("--workdir", default=None, type=Path)
    opt.add_argument("--force", action="store_true", default=False)
    opt.add_argument("--add-template", dest="add_templates", action="append", default=[], type=Path)
    opt.add_argument("--add-template-var", dest="add_template_vars", action="append", default=[])
    opt.add_argument("--add-arch-template", dest="add_arch_templates", action="append", default=[], type=Path)
    opt.add_argument("--add-arch-template-var", dest="add_arch_template_vars", action="append", default=[])
    opt.add_argument("--noverify", action="store_false", default=True, dest="verify")
    opt.add_argument("--sharedir", metavar="SHAREDIR", type=Path, default=None)
    opt.add_argument("--enablerepo", action="append", default=[], dest="enablerepos", metavar="[repo]")
    opt.add_argument("--disablerepo", action="append", default=[], dest="disablerepos", metavar="[repo]")
    opt.add_argument("--rootfs-size", type=int, default=3, help="GiB (default 3)")
    opt.add_argument("--noverifyssl", action="store_true", default=False)
    opt.add_argument("--dnfplugin", action="append", default=[], dest="dnfplugins")
    opt.add_argument("--squashfs-only", action="store_true", help="ignored, as in lorax")
    opt.add_argument("--skip-branding", action="store_true", default=False)
    opt.add_argument(
        "--rootfs-type",
        default="squashfs",
        dest="rootfs_type",
        choices=[*LORAX_ROOTFS_TYPES, "btrfs"],
        metavar="ROOTFSTYPE",
        help=f"{', '.join(LORAX_ROOTFS_TYPES)} (lorax's), btrfs (composer's)",
    )
    dr = p.add_argument_group("dracut arguments")
    dr.add_argument("--dracut-conf", default=None, type=Path)
    dr.add_argument(
        "--dracut-arg",
        action="append",
        dest="dracut_args",
        default=None,
        help="dracut argument; replaces the defaults (once per argument)",
    )
    p.add_argument("-V", action="version", version=f"lorax-{__version__} (composer {__version__})")
    p.add_argument("outputdir", metavar="OUTPUTDIR", type=Path)
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


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _overflow_uid() -> int:
    """The owner the kernel shows, in a user namespace, for ids it does not map (root's among them)."""
    try:
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534


def trusted_dir(path: Path, option: str) -> Path:
    """`path` with its links resolved (a /var/tmp linked to a build volume works), refused
    when a user other than root or composer's own could rename or replace what composer
    makes in it: a directory on the way that such a user owns, or that others may write
    without the sticky bit. composer's work directory inside gets a fresh unpredictable
    name, and nothing outside it is written. In composer's own user namespace (an ordinary
    user) root's directories show as the overflow uid, so that owner is accepted there."""
    real = Path(os.path.realpath(path))
    trusted = {0, os.geteuid()} | ({_overflow_uid()} if inside() else set())
    shown = f"{option} {path}" + (f" (leads to {real})" if real != Path(os.path.abspath(path)) else "")
    for d in (real, *real.parents):
        try:
            st = os.stat(d)
        except FileNotFoundError:
            continue  # composer creates it (as its own user)
        except OSError as e:
            raise ComposerError(f"{shown}: {d}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ComposerError(f"{shown}: {d} is not a directory")
        if st.st_uid not in trusted:
            raise ComposerError(
                f"{shown}: {d} belongs to {_owner(st.st_uid)}, who could change what composer builds "
                "there; give a directory that only root or you can write"
            )
        others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid()))
        if others and not st.st_mode & stat.S_ISVTX:
            raise ComposerError(
                f"{shown}: {d} is writable by other users (and not sticky), who could change what "
                "composer builds there; give a directory that only root or you can write"
            )
    return real


@dataclass(frozen=True)
class LoraxPlan:
    """A lorax command line as a composer build: the Config, the media options, the
    lorax variables composer passes to the templates, and what it could not honour."""

    config: Config
    volid: str | None
    arch_templates: tuple[Path, ...]
    arch_template_vars: tuple[tuple[str, str], ...]
    templatedir: Path | None
    logfile: Path
    domacboot: bool
    doupgrade: bool
    skip_branding: bool
    lorax_rootfs_type: str
    warnings: tuple[str, ...]


def _glue_dracut_args(argv: Sequence[str]) -> list[str]:
    """`--dracut-arg --xz` -> `--dracut-arg=--xz` (the value starts with '-')."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--dracut-arg":
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
    """The composer build a lorax command line asks for."""
    # composer makes its work directory inside this one (and removes it after the build)
    workdir = trusted_dir(args.workdir, "--workdir") if args.workdir is not None else trusted_dir(Path(args.tmp), "--tmp")
    return Config(
        product=args.product,
        version=args.version,
        release=args.release,
        outdir=args.outputdir.resolve(),
        sources=tuple(args.source),
        repofiles=tuple(p.resolve() for p in args.repos),
        mirrorlists=tuple(args.mirrorlist),
        branding=not args.skip_branding,
        proxy=proxy_url(args.proxy) if args.proxy else None,
        sslverify=not args.noverifyssl,
        enablerepos=tuple(args.enablerepos),
        disablerepos=tuple(args.disablerepos),
        variant=args.variant,
        bugurl=args.bugurl,
        isfinal=args.isfinal,
        arch=args.buildarch or platform.machine(),
        installpkgs=tuple(args.installpkgs),
        excludepkgs=tuple(args.excludepkgs),
        add_templates=tuple(args.add_templates),
        add_template_vars=parse_assignments(args.add_template_vars, "--add-template-var"),
        rootfs_type=ROOTFS_MAP[args.rootfs_type][0],
        rootfs_size=args.rootfs_size << 30,
        compression=compression,
        dracut_args=tuple(args.dracut_args) if args.dracut_args is not None else LORAX_DRACUT_DEFAULT,
        dracut_conf=args.dracut_conf.resolve() if args.dracut_conf else None,
        workdir=workdir,
        # lorax does not check signatures of --source repositories (see _not_honoured).
        nogpgcheck=bool(args.source or args.mirrorlist),
        cachedir=args.cachedir.resolve() if args.cachedir else DEFAULT_CACHEDIR,
        force=args.force,
    )


def buildstamp_text(cfg: Config, *, now: int | None = None, lorax_version: str = __version__) -> str:
    """lorax's /.buildstamp (what anaconda reads; --isfinal and --bugurl change it): an
    ini file with [Main] Product, Version, BugURL, IsFinal, UUID (build time + arch),
    Variant when given, and [Compose] Lorax."""
    when = cfg.source_date_epoch if cfg.source_date_epoch is not None else (now if now is not None else int(time.time()))
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y%m%d%H%M")
    lines = [
        "[Main]",
        f"Product={cfg.product}",
        f"Version={cfg.version}",
        f"BugURL={cfg.bugurl}",
        f"IsFinal={cfg.isfinal}",
        f"UUID={stamp}.{cfg.arch}",
    ]
    if cfg.variant:
        lines.append(f"Variant={cfg.variant}")
    lines += ["[Compose]", f"Lorax={lorax_version}"]
    return "\n".join(lines) + "\n"


def lorax_runtime_template(directory: Path, buildstamp: str, pkglists: Path | None) -> Path:
    """The template composer lorax adds to the runtime templates: it writes /.buildstamp
    (before dracut, so that lorax's `--dracut-arg --install --dracut-arg /.buildstamp`
    finds it) and, with runcmd on the host as lorax's templates do, pkglists/ from the
    rpm database before the cleanup template removes it. The values are baked into the
    text (not variables: those are part of the install stage's cache key) inside
    <%text>, so that Mako leaves them alone."""
    escaped = buildstamp.rstrip("\n").replace("\\", "\\\\").replace("\n", "\\n")  # append decodes escapes
    lines = ["-remove /.buildstamp", f"append /.buildstamp {shlex.quote(escaped)}"]
    if pkglists is not None:
        argv = [sys.executable, str(Path(loraxlogs.__file__).resolve()), "pkglists"]
        lines.append(f"runcmd {' '.join(shlex.quote(a) for a in argv)} ${{root}} {shlex.quote(str(pkglists))}")
    for line in lines:
        if "</%text>" in line or any(ord(c) < 32 for c in line):
            raise ComposerError(f"lorax: cannot write /.buildstamp with {line!r}")
    tmpl = directory / "lorax-runtime.tmpl"
    tmpl.write_text(
        "## composer lorax: what lorax adds to the runtime (/.buildstamp, pkglists/)\n"
        + lines[0]
        + "\n<%text>"
        + lines[1]
        + "</%text>\n"
        + "".join(f"{x}\n" for x in lines[2:])
    )
    return tmpl


# lorax's arch template per base architecture (treebuilder's templatemap)
ARCH_TEMPLATE = {"x86_64": "x86.tmpl", "aarch64": "aarch64.tmpl", "ppc64le": "ppc64le.tmpl", "s390x": "s390.tmpl"}


def lorax_media_mode(templatedir: Path, basearch: str) -> bool:
    """A lorax template set makes the media with its arch template (x86.tmpl...); composer's
    own sets have boot menus (grub2-efi.cfg) that composer's media stage fills instead."""
    return (templatedir / ARCH_TEMPLATE.get(basearch, "x86.tmpl")).is_file() and not (templatedir / "grub2-efi.cfg").is_file()


def make_lorax_media(cfg: Config, plan: LoraxPlan, rt, out: Path, work: Path, volid: str) -> None:
    """lorax's TreeBuilder: the --add-arch-template files, then the set's arch template,
    with the runtime tree as input root (kernels in boot/, the runtime image at
    images/install.img, as lorax has them) and the output directory as output root;
    then .treeinfo from what the templates recorded, and implantisomd5 on the ISO."""
    templatedir = template_dir(cfg)
    inroot = rt.tree
    for k in rt.kernels:
        copy_file(k.vmlinuz, inroot / "boot" / f"vmlinuz-{k.version}")
        copy_file(rt.initramfs[k.version], inroot / "boot" / f"initramfs-{k.version}.img")
    runtime_img = "images/install.img"
    (inroot / runtime_img).parent.mkdir(parents=True, exist_ok=True)
    copy_sparse(rt.squashfs, inroot / runtime_img)
    write_discinfo(out / ".discinfo", release=f"{cfg.product} {cfg.version}", arch=cfg.arch, timestamp=cfg.source_date_epoch)
    product = Product(cfg.product, cfg.version, cfg.release, cfg.variant, cfg.bugurl, cfg.isfinal)
    variables = lorax_variables(
        product,
        Arch.of(cfg.arch),
        isolabel=volid,
        runtime_img=runtime_img,
        domacboot=plan.domacboot,
        doupgrade=plan.doupgrade,
        workdir=str(work),
    )
    variables["rootfs_type"] = str(cfg.rootfs_type)
    runner = TemplateRunner(tree=out, inroot=inroot, templatedir=templatedir, variables=variables)
    for t in plan.arch_templates:  # lorax runs these first, with --add-arch-template-var
        runner.run(t.resolve(), dict(plan.arch_template_vars))
    runner.run(templatedir / ARCH_TEMPLATE[Arch.of(cfg.arch).basearch])
    treeinfo = runner.treeinfo
    write_treeinfo(
        out / ".treeinfo",
        product=cfg.product,
        version=cfg.version,
        arch=cfg.arch,
        variant=cfg.variant,
        images={},
        extra=treeinfo,
        checksum_root=out,
        timestamp=cfg.source_date_epoch,
    )
    for section in treeinfo.values():
        if "boot.iso" in section:
            run(["implantisomd5", str(out / section["boot.iso"])])


def compose_lorax_media(cfg: Config, plan: LoraxPlan, volid: str) -> None:
    found = check_sharedir(template_dir(cfg))  # a template error stops the build now, not after the runtime
    if found.errors:
        raise ComposerError(f"--sharedir {template_dir(cfg)}: " + "; ".join(found.errors))
    with compose_dirs(cfg) as (out, work):
        rt = build_runtime(cfg, work)
        make_lorax_media(cfg, plan, rt, out, work, volid)
    info(f"outputs in {cfg.outdir} (made by {ARCH_TEMPLATE[rt_basearch(cfg)]} of {template_dir(cfg)})")


def rt_basearch(cfg: Config) -> str:
    return Arch.of(cfg.arch).basearch


def run_plan(plan: LoraxPlan, tmp: Path) -> int:
    """The build; `tmp` is a private directory for composer's own runtime template and dnf's logs."""
    cfg = plan.config
    if plan.warnings:
        info("lorax: accepted but not honoured as lorax does: " + "; ".join(plan.warnings))
    if plan.templatedir is not None:
        cfg = dataclasses.replace(cfg, templatedir=plan.templatedir)
    volid = check_volid(plan.volid) if plan.volid else default_volid(cfg.product, cfg.version, cfg.arch)
    if cfg.arch not in EFI_ARCH_NAMES:
        raise ComposerError(
            f"--buildarch {cfg.arch}: no UEFI boot for this architecture (known: {', '.join(sorted(EFI_ARCH_NAMES))})"
        )
    if cfg.workdir is not None:
        cfg.workdir.mkdir(parents=True, exist_ok=True)  # lorax makes --tmp and --workdir too
    # composer's own runtime template (buildstamp, pkglists) lives outside the work directory:
    # inputs are never inside an output or work place (preflight refuses that).
    own = lorax_runtime_template(tmp, buildstamp_text(cfg), plan.logfile.parent / "pkglists")
    extra_vars = (("domacboot", plan.domacboot), ("doupgrade", plan.doupgrade))
    cfg = dataclasses.replace(
        cfg,
        add_template_vars=cfg.add_template_vars + extra_vars,
        add_templates=(own, *cfg.add_templates),
        dnf_logdir=tmp / "dnf-logs",
    )
    opts = MediaOptions(volid=volid, arch_templates=plan.arch_templates, arch_template_vars=plan.arch_template_vars)
    check_compose_inputs(cfg, "boot-iso")
    if lorax_media_mode(template_dir(cfg), rt_basearch(cfg)):
        compose_lorax_media(cfg, plan, volid)
    else:
        compose_boot_iso(cfg, opts)
    return 0


def _failure(e: BaseException) -> str:
    """What lorax.log and pylorax.log say about how the build ended."""
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted by {e or 'SIGINT'}"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e) or type(e).__name__


def open_logs(plan: LoraxPlan) -> None:
    """--logfile as composer's --logfile (no link followed, no FIFO, device or /proc file);
    pkglists/ beside it must be a directory, never a link to one elsewhere."""
    check_outputs_apart([("--logfile", plan.logfile)], [])
    check_dir_creatable(plan.logfile.parent, "--logfile")
    set_logging(verbose=False, logfile=plan.logfile, option="--logfile")
    pkglists = plan.logfile.parent / "pkglists"
    if os.path.islink(pkglists) or (os.path.lexists(pkglists) and not pkglists.is_dir()):
        raise ComposerError(
            f"--logfile {plan.logfile}: {pkglists} is a link or not a directory (lorax writes "
            "pkglists/ there; composer never writes through a link): remove it"
        )


def run_lorax(argv: Sequence[str]) -> int:
    """`composer lorax ARGS` and the `lorax` command (both through composer.cli.main).

    Usage errors exit 2 as lorax's do; other errors are raised for composer.cli to make
    one line of. lorax's logs (pylorax.log, program.log, dnf's) are written beside
    --logfile however the build ends, interrupted included."""
    plan = plan_from_argv(argv)
    open_logs(plan)
    with tempfile.TemporaryDirectory(prefix="composer-lorax.") as tmp:
        failure = None
        try:
            return run_plan(plan, Path(tmp))
        except BaseException as e:
            failure = _failure(e)
            raise
        finally:
            if failure is not None:
                debug(error_lines(failure).rstrip("\n"))
            try:
                derive_logs(plan.logfile.parent, read_log(plan.logfile), Path(tmp) / "dnf-logs")
            except OSError as e:
                if failure is None:  # a failed build's own error says more than this one
                    raise ComposerError(f"lorax's logs in {plan.logfile.parent}: {e.strerror}") from None
