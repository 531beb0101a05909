"""`composer verify`: boot a kernel and initrd, a boot.iso or a netboot tree in qemu and
wait for the boot marker; --min-memory bisects the smallest RAM that still boots."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from composer.cli.common import check_input_file, check_logfile
from composer.preflight import Place, check_dir_creatable, check_line, check_outputs_apart
from composer.run import ComposerError, info
from composer.verify import (
    boot_iso,
    boot_kernel,
    boot_netboot,
    find_floors,
    min_memory_line,
    predicted_floor,
    serve_netboot,
)


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
    """`verify --min-memory`: bisect --range in --step MB, print the usable and the reached
    floor (boot_kw picks the boot kind)."""
    lo_mb, hi_mb = _range_mb(args)
    if args.step <= 0:
        raise ComposerError(f"--step {args.step}: must be a positive number of MB")
    predicted = predicted_floor(kernel, initrd, getattr(args, "iso", None))
    floors = find_floors(
        kernel,
        initrd,
        lo_mb,
        hi_mb,
        args.step,
        log_dir=args.log.parent if args.log else None,
        timeout=args.timeout,
        accel=args.accel,
        marker=args.marker,
        guess_mb=predicted[0] if predicted else None,  # composer's budget: the search starts there
        **boot_kw,
    )
    for r in floors.results:
        info(f"verify: {r.memory_mb} MB: {'OK' if r.ok else 'FAIL'} in {r.seconds:.0f}s {'' if r.ok else r.reason}")
    if floors.usable_mb is None:
        raise ComposerError(f"verify: no boot marker at {floors.reference_mb} MB")
    print(min_memory_line(floors, args.step, predicted))
    return 0


def _check_verify_options(args: argparse.Namespace) -> None:
    """Numbers qemu or the bisection would choke on, and a log that cannot be written."""
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
    if args.press_enter and args.iso is None:
        raise ComposerError("--press-enter: only with --iso (a --kernel or --netboot boot has no boot menu of its own to answer)")
    if args.min_memory:
        _, hi = _range_mb(args)
        if hi > host_mb:
            raise ComposerError(f"--range {args.range}: more than this host's {host_mb} MB of RAM")
    # qemu gets it as one argv word (no menu parses it): one line, and balanced quotes.
    check_line("--append", args.append)
    check_line("--check-args", args.check_args)
    _split_append(args.check_args, "--check-args")
    if not check_line("--marker", args.marker).strip():
        raise ComposerError("--marker: must not be empty (the line the image prints once it is up)")
    _split_append(args.append)
    if args.log is not None:
        check_logfile(args.log, "--log")
        # The serial log is written: never over what is booted.
        inputs = [
            Place(p, f"{opt} {p}")
            for opt, p in (("--kernel", args.kernel), ("--initrd", args.initrd), ("--iso", args.iso), ("--netboot", args.netboot))
            if p
        ]
        check_outputs_apart([("--log", args.log)], inputs)
        check_dir_creatable(args.log.parent, "--log")


# What composer's test product (tools/testproduct) prints once it is up, and the kernel
# arguments that ask it to (then it powers off): the defaults of --marker and --check-args.
TEST_PRODUCT_MARKER = "COMPOSER-BOOT-OK"
TEST_PRODUCT_CHECK_ARGS = "composer.check=poweroff"

# Longer than any boot under TCG; keeps a typo (or inf) from waiting forever.
MAX_TIMEOUT = 86400


def host_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def _split_append(text: str, option: str = "--append") -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ComposerError(f"{option} {text!r}: {e}") from None


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
        return verify_media(args)
    if args.min_memory:
        return report_min_memory(args, args.kernel, args.initrd, check_args=args.check_args, append=args.append)

    result = boot_kernel(
        args.kernel,
        args.initrd,
        memory_mb=args.memory,
        marker=args.marker,
        check_args=args.check_args,
        append=args.append,
        timeout=args.timeout,
        accel=args.accel,
        log=args.log,
    )
    if result.ok:
        info(f"verify: boot marker seen after {result.seconds:.0f}s at {args.memory} MB: {result.marker_line}")
        return 0
    raise ComposerError(
        f"verify: no boot marker at {args.memory} MB after {result.seconds:.0f}s: {result.reason} (serial log: {result.log})"
    )


def add_verify_media_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iso", type=Path, default=None, help="boot this ISO as a CD instead of --kernel/--initrd")
    p.add_argument("--firmware", default="bios", choices=["bios", "uefi"], help="for --iso/--netboot: SeaBIOS or OVMF")
    p.add_argument(
        "--press-enter",
        action="store_true",
        help="for --iso: press Enter at the boot menu (its default entry boots without waiting for the menu's timeout)",
    )
    p.add_argument(
        "--netboot",
        type=Path,
        default=None,
        metavar="DIR",
        help="boot a `composer netboot` tree through qemu's TFTP (and HTTP on 127.0.0.1 when its URL is http://10.0.2.2:PORT/)",
    )
    p.add_argument("--bootfile", default=None, help="for --netboot: the DHCP boot file (default boot.ipxe or grubpxe.0)")


def check_iso_file(path: Path) -> None:
    """An ISO 9660 image (the primary volume descriptor's "CD001" at byte 32769), checked
    before qemu starts: a random file would boot nothing and wait for the timeout."""
    check_input_file(path, "--iso")
    with path.open("rb") as f:
        f.seek(16 * 2048 + 1)
        if f.read(5) != b"CD001":
            raise ComposerError(
                f"--iso {path}: not an ISO 9660 image (no CD001 volume descriptor); give a boot.iso, e.g. OUTDIR/images/boot.iso"
            )


def _netboot_meta(tree: Path) -> dict[str, Any]:
    """The tree's netboot.json, its url checked (and its NBD server, if any)."""
    meta_file = tree / "netboot.json"
    if not meta_file.is_file():
        raise ComposerError(f"--netboot {tree}: not a netboot tree (no netboot.json)")
    try:
        meta = json.loads(meta_file.read_text())
        url = meta["url"]
        if not isinstance(url, str):
            raise TypeError(f"url is {type(url).__name__}")
        urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
        nbd = meta.get("nbd")
        if nbd is not None and not (isinstance(nbd.get("port"), int) and isinstance(nbd.get("export"), str)):
            raise TypeError("nbd has no port or export")
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise ComposerError(f"--netboot {tree}: {meta_file.name} is not composer's (no valid url: {e})") from None
    return meta


def check_verify_media(args: argparse.Namespace) -> None:
    """`verify --iso/--netboot` inputs, checked before qemu starts."""
    if args.iso is not None:
        check_iso_file(args.iso)
    else:
        _netboot_meta(args.netboot)


def verify_media(args: argparse.Namespace) -> int:
    common = {"memory_mb": args.memory, "timeout": args.timeout, "accel": args.accel, "log": args.log, "marker": args.marker}
    check_verify_media(args)
    if args.iso is not None:
        if args.min_memory:

            def boot_cd(_kernel: object, _initrd: object, **kw: Any) -> Any:
                return boot_iso(args.iso, firmware=args.firmware, enter=args.press_enter, **kw)

            return report_min_memory(args, None, None, boot=boot_cd)
        result = boot_iso(args.iso, firmware=args.firmware, enter=args.press_enter, **common)
        what = f"{args.iso} ({args.firmware})"
    else:
        tree = args.netboot
        meta = _netboot_meta(tree)
        url = urlsplit(meta["url"])
        local = url.hostname == "10.0.2.2"
        bootfile = args.bootfile or ("boot.ipxe" if local else "grubpxe.0" if args.firmware == "bios" else "grubx64.efi")
        # What the guest reaches as 10.0.2.2 (this host's loopback) is served here.
        with serve_netboot(tree, meta):

            def boot_net(_kernel: object, _initrd: object, **kw: Any) -> Any:
                return boot_netboot(tree, bootfile, firmware=args.firmware, **kw)

            if args.min_memory:
                pxe = tree / "images" / "pxeboot"  # for the budget its initrd carries
                return report_min_memory(args, pxe / "vmlinuz", pxe / "initrd.img", boot=boot_net)
            result = boot_net(None, None, **common)
        what = f"{tree} ({args.firmware}, {bootfile})"
    if result.ok:
        info(f"verify: {what}: boot marker seen after {result.seconds:.0f}s at {args.memory} MB: {result.marker_line}")
        return 0
    raise ComposerError(
        f"verify: {what}: no boot marker at {args.memory} MB after {result.seconds:.0f}s: "
        f"{result.reason} (serial log: {result.log})"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("verify", help="boot a kernel and initrd in qemu and wait for the boot marker")
    p.add_argument("--kernel", type=Path, default=None)
    p.add_argument("--initrd", type=Path, default=None)
    p.add_argument("--memory", type=int, default=512, metavar="MB")
    p.add_argument("--append", default="", help="extra kernel arguments")
    p.add_argument(
        "--marker",
        default=TEST_PRODUCT_MARKER,
        metavar="TEXT",
        help=f"the console line (its start) that says the image is up (default {TEST_PRODUCT_MARKER}, composer's test product's)",
    )
    p.add_argument(
        "--check-args",
        default=TEST_PRODUCT_CHECK_ARGS,
        metavar="ARGS",
        help="kernel arguments that make the image print the marker, for --kernel/--initrd "
        f"(default {TEST_PRODUCT_CHECK_ARGS}; with --iso/--netboot the boot menu decides)",
    )
    p.add_argument("--timeout", type=float, default=900, metavar="SECONDS")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    p.add_argument("--log", type=Path, default=None, help="where to keep the serial console log")
    p.add_argument(
        "--min-memory",
        action="store_true",
        help="bisect the least --memory that boots within 1.5x the time at 512 MB (usable) and the least that boots at all",
    )
    p.add_argument("--range", default="128-768", metavar="LO-HI", help="bounds in MB for --min-memory (default 128-768)")
    p.add_argument("--step", type=int, default=16, metavar="MB", help="granularity of --min-memory (default 16)")
    add_verify_media_options(p)
    p.set_defaults(func=cmd_verify, prepare=prepare_verify)
