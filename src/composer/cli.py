"""composer's command line: one subcommand per job, errors as one line."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
from pathlib import Path

from composer.config import Compression, Config, RootfsType, parse_size
from composer.run import ComposerError, info, set_logging


def _add_compose_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", type=Path, help="output directory (refused if it exists, unless --force)")
    p.add_argument("-p", "--product", required=True, help="product name; selects templates/<product>")
    p.add_argument("-v", "--version", required=True, help="product version (dnf releasever)")
    p.add_argument("-r", "--release", default="", help="release string")
    p.add_argument("-s", "--source", action="append", default=[], metavar="URL", help="package repository URL (repeatable)")
    p.add_argument("--repo", action="append", default=[], type=Path, metavar="FILE", help="dnf .repo file (repeatable)")
    p.add_argument("-t", "--variant", default="", help="variant name")
    p.add_argument("-b", "--bugurl", default="", help="bug reporting URL")
    p.add_argument("--isfinal", action="store_true", help="this is a final release")
    p.add_argument("--buildarch", default=platform.machine(), help="architecture to build for (default: this host's)")
    p.add_argument("-i", "--installpkgs", action="append", default=[], metavar="PKG", help="extra package (glob) to install (repeatable)")
    p.add_argument("-e", "--excludepkgs", action="append", default=[], metavar="PKG", help="package (glob) never to install (repeatable)")
    p.add_argument("--add-template", action="append", default=[], type=Path, metavar="FILE", help="extra template run after postinstall (repeatable)")
    p.add_argument("--add-template-var", action="append", default=[], metavar="NAME=VALUE", help="variable for the templates (repeatable)")
    p.add_argument("--rootfs-type", default="btrfs", choices=[t.value for t in RootfsType], help="filesystem of LiveOS/rootfs.img (squashfs: no rootfs.img)")
    p.add_argument("--rootfs-size", default=None, metavar="SIZE", help="free room in rootfs.img for the runtime's writes, e.g. 512M (sparse)")
    p.add_argument("--compression", default="xz", choices=[c.value for c in Compression], help="squashfs compressor")
    p.add_argument("--dracut-arg", action="append", default=[], metavar="ARG", help="extra dracut argument (repeatable)")
    p.add_argument("--dracut-conf", type=Path, default=None, metavar="FILE", help="extra dracut configuration file")
    p.add_argument("--nogpgcheck", action="store_true", help="do not check package signatures")
    p.add_argument("--workdir", type=Path, default=None, help="where the tree is built (default: /var/tmp)")
    p.add_argument("--cachedir", type=Path, default=Path("/var/cache/composer"), help="persistent cache (dnf packages)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the work directory (for debugging)")
    p.add_argument("--force", action="store_true", help="replace OUTDIR once the new output is complete")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="reproducible build: timestamps clamped to this (default: $SOURCE_DATE_EPOCH if set)")
    p.add_argument("--no-cache", action="store_true", help="do not reuse a cached populated tree")
    p.add_argument("--osmin", action="store_true",
                   help="also ship LiveOS/osmin.img.gz, a minimized-install delta of rootfs.img (ext4 only)")


def _template_vars(items: list[str], option: str = "--add-template-var") -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ComposerError(f"{option} {item!r}: expected NAME=VALUE with NAME a valid identifier")
        out.append((name, value))
    return tuple(out)


# cpio (newc) and squashfs keep 32-bit timestamps: a later epoch cannot be stored.
MAX_EPOCH = 2**32 - 1


def _source_date_epoch(option: int | None) -> int | None:
    if option is not None:
        if option < 0:
            raise ComposerError(f"--source-date-epoch {option}: must not be negative")
        if option > MAX_EPOCH:
            raise ComposerError(f"--source-date-epoch {option}: too large (at most {MAX_EPOCH})")
        return option
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if not env:
        return None
    if not env.isdigit() or not env.isascii():
        raise ComposerError(f"SOURCE_DATE_EPOCH={env!r}: expected a number of seconds since 1970")
    if int(env) > MAX_EPOCH:
        raise ComposerError(f"SOURCE_DATE_EPOCH={env}: too large (at most {MAX_EPOCH})")
    return int(env)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        product=args.product,
        version=args.version,
        outdir=args.outdir,
        release=args.release,
        sources=tuple(args.source),
        repofiles=tuple(p.resolve() for p in args.repo),
        variant=args.variant,
        bugurl=args.bugurl,
        isfinal=args.isfinal,
        arch=args.buildarch,
        installpkgs=tuple(args.installpkgs),
        excludepkgs=tuple(args.excludepkgs),
        add_templates=tuple(args.add_template),
        add_template_vars=_template_vars(args.add_template_var),
        rootfs_type=RootfsType(args.rootfs_type),
        rootfs_size=parse_size(args.rootfs_size, "--rootfs-size") if args.rootfs_size is not None else None,
        compression=Compression(args.compression),
        dracut_args=tuple(args.dracut_arg),
        dracut_conf=args.dracut_conf,
        nogpgcheck=args.nogpgcheck,
        workdir=args.workdir,
        cachedir=args.cachedir.resolve(),
        force=args.force,
        keep_workdir=args.keep_workdir,
        source_date_epoch=_source_date_epoch(args.source_date_epoch),
        use_cache=not args.no_cache,
        osmin=args.osmin,
    )


def cmd_runtime(args: argparse.Namespace) -> int:
    from composer.kickstart import config_with_kickstart

    from composer.preflight import check_compose_inputs

    cfg, _ = config_with_kickstart(config_from_args(args), args.ks)
    check_compose_inputs(cfg, "runtime")
    from composer.runtime import compose_runtime

    compose_runtime(cfg)
    return 0


def _range_mb(args: argparse.Namespace) -> tuple[int, int]:
    lo, _, hi = args.range.partition("-")
    try:
        lo_mb, hi_mb = int(lo), int(hi)
    except ValueError:
        raise ComposerError(f"--range {args.range!r}: expected LO-HI in MB, e.g. 128-768") from None
    if not 0 < lo_mb <= hi_mb:
        raise ComposerError(f"--range {args.range!r}: need 0 < LO <= HI")
    return lo_mb, hi_mb


def report_min_memory(args: argparse.Namespace, kernel: Path | None, initrd: Path | None, **boot_kw: object) -> int:
    """`verify --min-memory`: bisect --range in --step MB, print the floor (boot_kw picks the boot kind)."""
    from composer.verify import find_min_memory

    lo_mb, hi_mb = _range_mb(args)
    if args.step <= 0:
        raise ComposerError(f"--step {args.step}: must be a positive number of MB")
    best, results = find_min_memory(
        kernel, initrd, lo_mb, hi_mb, args.step, log_dir=args.log.parent if args.log else None,
        timeout=args.timeout, accel=args.accel, **boot_kw,
    )
    for r in results:
        info(f"verify: {r.memory_mb} MB: {'OK' if r.ok else 'FAIL'} in {r.seconds:.0f}s {'' if r.ok else r.reason}")
    if best is None:
        raise ComposerError(f"verify: no boot marker even at {hi_mb} MB")
    from composer.verify import min_memory_line, predicted_floor

    print(min_memory_line(best, args.step, predicted_floor(kernel, initrd, getattr(args, "iso", None))))
    return 0


def _check_verify_options(args: argparse.Namespace) -> None:
    """Numbers qemu or the bisection would choke on, and a log that cannot be written."""
    from composer.preflight import check_dir_creatable

    if args.memory < 16:
        raise ComposerError(f"--memory {args.memory}: too small (MB; at least 16)")
    if not args.timeout > 0:
        raise ComposerError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    if args.step < 1:
        raise ComposerError(f"--step {args.step}: must be at least 1 MB")
    if args.min_memory:
        _range_mb(args)
    if args.log is not None:
        if args.log.is_dir():
            raise ComposerError(f"--log {args.log}: is a directory")
        check_dir_creatable(args.log.parent, "--log")


def _check_kernel_file(path: Path) -> None:
    # qemu loads x86 kernels only (verify.QEMU): a bzImage has "HdrS" at 0x202.
    with path.open("rb") as f:
        f.seek(0x202)
        if f.read(4) != b"HdrS":
            raise ComposerError(f"--kernel {path}: not a Linux kernel image (no x86 boot header)")


def cmd_verify(args: argparse.Namespace) -> int:
    _check_verify_options(args)
    if args.iso is not None or args.netboot is not None:
        from composer.bootiso import verify_media

        return verify_media(args)
    if args.kernel is None or args.initrd is None:
        raise ComposerError("verify: give --kernel and --initrd, or --iso ISO, or --netboot DIR")
    for opt, path in (("--kernel", args.kernel), ("--initrd", args.initrd)):
        if not path.is_file():
            raise ComposerError(f"{opt} {path}: no such file")
        if path.stat().st_size == 0:
            raise ComposerError(f"{opt} {path}: empty file")
    _check_kernel_file(args.kernel)
    from composer.verify import boot_kernel

    if args.min_memory:
        return report_min_memory(args, args.kernel, args.initrd, append=args.append)

    result = boot_kernel(
        args.kernel, args.initrd, memory_mb=args.memory, append=args.append,
        timeout=args.timeout, accel=args.accel, log=args.log,
    )
    if result.ok:
        info(f"verify: boot marker seen after {result.seconds:.0f}s at {args.memory} MB: {result.marker_line}")
        return 0
    raise ComposerError(f"verify: no boot marker at {args.memory} MB after {result.seconds:.0f}s: {result.reason} (serial log: {result.log})")


def cmd_template_check(args: argparse.Namespace) -> int:
    """Render and parse templates without building anything: catches errors before a long build."""
    from composer.run import DATADIR
    from composer.templates import TemplateRunner, iter_template_files, sample_variables

    paths = list(args.templates) or list(iter_template_files(DATADIR / "templates"))
    variables = sample_variables(args.basearch) | dict(_template_vars(args.add_template_var))
    for t in paths:
        if t.is_dir():
            raise ComposerError(f"{t}: a directory, not a template (give its *.tmpl files)")
        if not t.is_file():
            raise ComposerError(f"{t}: no such template")
        TemplateRunner(tree=Path("/nonexistent-tree"), templatedir=t.parent, variables=variables, dry_run=True).run(t)
        print(f"ok: {t}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="composer", description="Build boot and runtime images of RPM-based operating systems.")
    parser.add_argument("--verbose", action="store_true", help="show every command and its output")
    parser.add_argument("--logfile", type=Path, default=None, help="write a full log here")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from composer.bootiso import add_verify_media_options
    from composer.kickstart import add_ks_option

    p = sub.add_parser("runtime", help="compose a runtime: big initrd (boots from RAM), install.img, manifest")
    _add_compose_options(p)
    add_ks_option(p)
    p.set_defaults(func=cmd_runtime)

    p = sub.add_parser("verify", help="boot a kernel and initrd in qemu and wait for the boot marker")
    p.add_argument("--kernel", type=Path, default=None)
    p.add_argument("--initrd", type=Path, default=None)
    p.add_argument("--memory", type=int, default=512, metavar="MB")
    p.add_argument("--append", default="", help="extra kernel arguments")
    p.add_argument("--timeout", type=float, default=900, metavar="SECONDS")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    p.add_argument("--log", type=Path, default=None, help="where to keep the serial console log")
    p.add_argument("--min-memory", action="store_true", help="bisect the smallest --memory that still reaches the marker")
    p.add_argument("--range", default="128-768", metavar="LO-HI", help="bounds in MB for --min-memory (default 128-768)")
    p.add_argument("--step", type=int, default=16, metavar="MB", help="granularity of --min-memory (default 16)")
    add_verify_media_options(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("template-check", help="render and parse templates without building (all of templates/ by default)")
    p.add_argument("templates", nargs="*", type=Path, metavar="TEMPLATE")
    p.add_argument("--basearch", default="x86_64")
    p.add_argument("--add-template-var", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=cmd_template_check)

    from composer.bootiso import register as register_bootiso
    from composer.live.cli import register as register_live
    from composer.netboot import register as register_netboot

    register_bootiso(sub)
    register_netboot(sub)

    register_live(sub)

    return parser


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, frame: object) -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into one KeyboardInterrupt, so every cleanup runs.

    Later signals are swallowed (not SIG_IGN, which children would inherit): a second
    Ctrl-C must not interrupt the cleanup that removes the half-built output.
    """
    for s in _STOP_SIGNALS:
        signal.signal(s, _swallow)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _swallow(signum: int, frame: object) -> None:
    pass


# Options whose values are themselves options (`--dracut-arg --add`): argparse would
# take such a value for an unknown or ambiguous option of ours.
_PASS_THROUGH_OPTIONS = ("--dracut-arg",)


def _glue_pass_through(argv: list[str]) -> list[str]:
    """`--dracut-arg --add` -> `--dracut-arg=--add`, so the value can start with '-'."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        value = next(it, None) if arg in _PASS_THROUGH_OPTIONS else None
        out.append(arg if value is None else f"{arg}={value}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_glue_pass_through(sys.argv[1:] if argv is None else list(argv)))
    set_logging(verbose=args.verbose, logfile=args.logfile)
    previous = {s: signal.signal(s, _terminate) for s in _STOP_SIGNALS}
    try:
        return args.func(args)
    except ComposerError as e:
        print(f"composer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"composer: interrupted by {name}; cleaned up", file=sys.stderr)
        return 128 + getattr(signal.Signals, name, signal.SIGINT).value
    except OSError as e:
        where = f" {e.filename}:" if e.filename else ""
        print(f"composer: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
