"""composer's command line: one subcommand per job, errors as one line."""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import sys
from pathlib import Path
from typing import Any

from composer import __version__
from composer.config import DEFAULT_CACHEDIR, Compression, Config, DnfChoice, RootfsType, parse_assignments, parse_size
from composer.run import ComposerError, info, set_logging
from composer.userns import command_words, enter_user_namespace


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
    p.add_argument("-i", "--installpkgs", action="append", default=[], metavar="PKG",
                   help="extra package (glob) to install (repeatable)")
    p.add_argument("-e", "--excludepkgs", action="append", default=[], metavar="PKG",
                   help="package (glob) never to install (repeatable)")
    p.add_argument("--add-template", action="append", default=[], type=Path, metavar="FILE",
                   help="extra template run after postinstall (repeatable)")
    p.add_argument("--add-template-var", action="append", default=[], metavar="NAME=VALUE",
                   help="variable for the templates (repeatable)")
    p.add_argument("--rootfs-type", default="btrfs", choices=[t.value for t in RootfsType],
                   help="filesystem of LiveOS/rootfs.img (squashfs: no rootfs.img)")
    p.add_argument("--rootfs-size", default=None, metavar="SIZE",
                   help="free room in rootfs.img for the runtime's writes, e.g. 512M (sparse)")
    p.add_argument("--compression", default="xz", choices=[c.value for c in Compression], help="squashfs compressor")
    p.add_argument("--dracut-arg", action="append", default=[], metavar="ARG", help="extra dracut argument (repeatable)")
    p.add_argument("--dracut-conf", type=Path, default=None, metavar="FILE", help="extra dracut configuration file")
    p.add_argument("--nogpgcheck", action="store_true", help="do not check package signatures")
    p.add_argument("--dnf", default="auto", choices=[c.value for c in DnfChoice],
                   help="dnf command line to drive (default: whatever `dnf` is; dnf5 on Fedora 41+)")
    p.add_argument("--dnf-root", type=Path, default=None, metavar="DIR",
                   help="run dnf and rpm from this root directory (bubblewrap), e.g. one with dnf5 made by "
                        "scripts/dnf5-root (default: $COMPOSER_DNF_ROOT, else the host's dnf)")
    p.add_argument("--workdir", type=Path, default=None, help="where the tree is built (default: /var/tmp)")
    p.add_argument("--cachedir", type=Path, default=DEFAULT_CACHEDIR,
                   help=f"persistent cache (dnf packages, trees; default: {DEFAULT_CACHEDIR})")
    p.add_argument("--keep-workdir", action="store_true", help="keep the work directory (for debugging)")
    p.add_argument("--force", action="store_true", help="replace OUTDIR once the new output is complete")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="reproducible build: timestamps clamped to this (default: $SOURCE_DATE_EPOCH if set)")
    p.add_argument("--no-cache", action="store_true", help="do not reuse a cached populated tree")
    p.add_argument("--osmin", action="store_true",
                   help="also ship LiveOS/osmin.img.gz, a minimized-install delta of rootfs.img (ext4 only)")


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
    if len(env) > len(str(MAX_EPOCH)) or int(env) > MAX_EPOCH:
        raise ComposerError(f"SOURCE_DATE_EPOCH={env[:20]}: too large (at most {MAX_EPOCH})")
    return int(env)


def _dnf_root(option: Path | None) -> Path | None:
    """--dnf-root, else $COMPOSER_DNF_ROOT, as an absolute directory."""
    from composer.dnf import DNF_ROOT_ENV

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
    from composer.preflight import check_config_values

    cfg = _config(args)
    check_config_values(cfg)
    if cfg.dnf is not DnfChoice.AUTO or cfg.dnf_root is not None:
        from composer.dnf import find_dnf

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
        source_date_epoch=_source_date_epoch(args.source_date_epoch),
        use_cache=not args.no_cache,
        osmin=args.osmin,
    )


def prepare_runtime(args: argparse.Namespace) -> Config:
    """Every check of `composer runtime` that runs before any work (reads only)."""
    from composer.kickstart import config_with_kickstart
    from composer.preflight import check_compose_inputs

    cfg, _ = config_with_kickstart(config_from_args(args), args.ks)
    check_compose_inputs(cfg, "runtime", ks=args.ks)
    return cfg


def cmd_runtime(args: argparse.Namespace) -> int:
    cfg = prepare_runtime(args)
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


def report_min_memory(args: argparse.Namespace, kernel: Path | None, initrd: Path | None, **boot_kw: Any) -> int:
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
    from composer.preflight import check_dir_creatable, check_line

    host_mb = host_memory_mb()
    if args.memory < 16:
        raise ComposerError(f"--memory {args.memory}: too small (MB; at least 16)")
    if args.memory > host_mb:
        raise ComposerError(f"--memory {args.memory}: more than this host's {host_mb} MB of RAM (MB; e.g. 512)")
    if not args.timeout > 0:
        raise ComposerError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    if args.timeout > MAX_TIMEOUT:
        raise ComposerError(f"--timeout {args.timeout:g}: at most {MAX_TIMEOUT} seconds (a day)")
    if args.step < 1:
        raise ComposerError(f"--step {args.step}: must be at least 1 MB")
    if args.min_memory:
        _, hi = _range_mb(args)
        if hi > host_mb:
            raise ComposerError(f"--range {args.range}: more than this host's {host_mb} MB of RAM")
    # qemu gets it as one argv word (no menu parses it): one line, and balanced quotes.
    check_line("--append", args.append)
    _split_append(args.append)
    if args.log is not None:
        from composer.preflight import Place, check_outputs_apart

        check_logfile(args.log, "--log")
        # The serial log is written: never over what is booted.
        inputs = [Place(p, f"{opt} {p}") for opt, p in (("--kernel", args.kernel), ("--initrd", args.initrd),
                                                         ("--iso", args.iso), ("--netboot", args.netboot)) if p]
        check_outputs_apart([("--log", args.log)], inputs)
        check_dir_creatable(args.log.parent, "--log")


# Longer than any boot under TCG; keeps a typo (or inf) from waiting forever.
MAX_TIMEOUT = 86400


def host_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def _split_append(text: str) -> list[str]:
    import shlex

    try:
        return shlex.split(text)
    except ValueError as e:
        raise ComposerError(f"--append {text!r}: {e}") from None


def check_input_file(path: Path, option: str) -> None:
    """An input file: exists, is a regular file (not a directory or a device), not empty."""
    if not os.path.lexists(path):
        raise ComposerError(f"{option} {path}: no such file")
    if path.is_dir():
        raise ComposerError(f"{option} {path}: is a directory (give the file itself)")
    if not path.is_file():
        raise ComposerError(f"{option} {path}: not a regular file")
    if path.stat().st_size == 0:
        raise ComposerError(f"{option} {path}: empty file")


def check_logfile(path: Path | None, option: str) -> None:
    """A log is appended to: never a system file, a directory or something not a file."""
    if path is None:
        return
    from composer.preflight import check_dir_creatable, check_outputs_apart

    check_outputs_apart([(option, path)], [])
    if path.is_dir():
        raise ComposerError(f"{option} {path}: is a directory")
    if os.path.lexists(path) and not path.is_file():
        raise ComposerError(f"{option} {path}: not a regular file")
    check_dir_creatable(Path(os.path.abspath(path)).parent, option)


def _check_kernel_file(path: Path) -> None:
    # qemu loads x86 kernels only (verify.QEMU): a bzImage has "HdrS" at 0x202.
    with path.open("rb") as f:
        f.seek(0x202)
        if f.read(4) != b"HdrS":
            raise ComposerError(f"--kernel {path}: not a Linux kernel image (no x86 boot header)")


def prepare_verify(args: argparse.Namespace) -> None:
    """Every check of `composer verify` before qemu starts."""
    _check_verify_options(args)
    if args.iso is not None or args.netboot is not None:
        from composer.bootiso import check_verify_media

        check_verify_media(args)
        return
    if args.kernel is None or args.initrd is None:
        raise ComposerError("verify: give --kernel and --initrd, or --iso ISO, or --netboot DIR")
    for opt, path in (("--kernel", args.kernel), ("--initrd", args.initrd)):
        check_input_file(path, opt)
    _check_kernel_file(args.kernel)


def cmd_verify(args: argparse.Namespace) -> int:
    prepare_verify(args)
    if args.iso is not None or args.netboot is not None:
        from composer.bootiso import verify_media

        return verify_media(args)
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
    raise ComposerError(f"verify: no boot marker at {args.memory} MB after {result.seconds:.0f}s: {result.reason} "
                        f"(serial log: {result.log})")


def cmd_template_check(args: argparse.Namespace) -> int:
    """Render and parse templates without building anything: catches errors before a long build."""
    from composer.preflight import check_arch, check_template_vars
    from composer.run import DATADIR
    from composer.templates import TemplateRunner, iter_template_files, sample_variables

    check_arch("--basearch", args.basearch)
    if args.sharedir is not None:
        template_vars = parse_assignments(args.add_template_var)
        check_template_vars("--add-template-var", template_vars)
        if args.templates:
            raise ComposerError("template-check: give --sharedir DIR or TEMPLATE files, not both")
        from composer.loraxcheck import check_sharedir

        result = check_sharedir(args.sharedir, extra=dict(template_vars))
        for line in result.checked:
            print(f"checked: {line}")
        for line in result.errors:
            print(line)
        if result.errors:
            raise ComposerError(f"--sharedir {args.sharedir}: {len(result.errors)} error(s) in the template set (listed above)")
        print(f"ok: {args.sharedir}: {len(result.checked)} templates, no errors")
        return 0
    paths = list(args.templates) or list(iter_template_files(DATADIR / "templates"))
    template_vars = parse_assignments(args.add_template_var)
    check_template_vars("--add-template-var", template_vars)
    variables = sample_variables(args.basearch) | dict(template_vars)
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
    parser.add_argument("--version", action="version", version=f"composer {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show every command and its output")
    parser.add_argument("--logfile", type=Path, default=None, help="write a full log here")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from composer.bootiso import add_verify_media_options
    from composer.kickstart import add_ks_option

    p = sub.add_parser("runtime", help="compose a runtime: big initrd (boots from RAM), install.img, manifest")
    _add_compose_options(p)
    add_ks_option(p)
    p.set_defaults(func=cmd_runtime, prepare=prepare_runtime)

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
    p.set_defaults(func=cmd_verify, prepare=prepare_verify)

    p = sub.add_parser("template-check", help="render and parse templates without building (all of templates/ by default)")
    p.add_argument("templates", nargs="*", type=Path, metavar="TEMPLATE")
    p.add_argument("--basearch", default="x86_64")
    p.add_argument("--sharedir", type=Path, default=None, metavar="DIR",
                   help="check a whole lorax template set (runtime, arch and included templates) with lorax's variables")
    p.add_argument("--add-template-var", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=cmd_template_check)

    sub.add_parser("lorax", add_help=False, help="lorax's command line: `composer lorax --help` (a drop-in for lorax)")

    from composer.bootiso import register as register_bootiso
    from composer.live.cli import register as register_live
    from composer.mkksiso import register as register_mkksiso
    from composer.netboot import register as register_netboot

    register_bootiso(sub)
    register_netboot(sub)
    register_mkksiso(sub)

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
    """`--dracut-arg --add` -> `--dracut-arg=--add`, so the value can start with '-'.

    `--opt=--` is refused here: argparse drops a "--" value and hands the command a list."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and arg.endswith("=--") and arg.count("=") == 1:
            raise ComposerError(f"{arg}: '--' is not a value for {arg[:-3]}")
        value = next(it, None) if arg in _PASS_THROUGH_OPTIONS else None
        out.append(arg if value is None else f"{arg}={value}")
    return out


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(message: str) -> str:
    """An error is one line: control characters from a value or path (a newline in a
    file name) are shown escaped, as Python would."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lorax"]:
        # lorax's own command line (its -v, -V, -c... are not composer's options)
        from composer.loraxcli import main as lorax_main

        try:
            enter_user_namespace(("lorax",), argv)  # as an ordinary user (composer.userns)
        except ComposerError as e:
            print(f"composer: error: {one_line(str(e))}", file=sys.stderr)
            return 1
        return lorax_main(argv[1:])
    parser = build_parser()
    try:
        glued = _glue_pass_through(argv)
    except ComposerError as e:
        parser.error(one_line(str(e)))
    args = parser.parse_args(glued)
    previous = {s: signal.signal(s, _terminate) for s in _STOP_SIGNALS}
    try:
        check_logfile(args.logfile, "--logfile")
        enter_user_namespace(command_words(args), argv)  # as an ordinary user (composer.userns)
        set_logging(verbose=args.verbose, logfile=args.logfile)
        return args.func(args)
    except ComposerError as e:
        print(f"composer: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"composer: interrupted by {name}; cleaned up", file=sys.stderr)
        # Stop signals stay swallowed until exit: one more arriving now must not turn the
        # clean exit status into a death by signal.
        previous = {}
        return 128 + getattr(signal.Signals, name, signal.SIGINT).value
    except OSError as e:
        where = f" {e.filename}:" if e.filename else ""
        print(one_line(f"composer: error:{where} {e.strerror or e}"), file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
