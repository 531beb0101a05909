"""`composer livemedia ...` (and the optional `livemedia-creator` command): livemedia-creator's
command line for its no-VM path (`--no-virt`, the only mode: no anaconda, no VM).

lmc's spellings and defaults (lorax 40, cmdline.lmc_parser). What needs a VM or anaconda
is refused in one line that says so; what composer does not do yet, likewise. The build
itself is composer.pipelines.livemedia's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from composer import __version__
from composer.cli.common import check_logfile, source_date_epoch, trusted_dir
from composer.cli.options import PASS_THROUGH_OPTIONS, ROOTFS_MAP
from composer.config import DEFAULT_CACHEDIR, Compression, Config, RootfsType
from composer.images.disk import plan_disk
from composer.images.iso import check_volid, default_volid
from composer.kickstart import apply_kickstart, load_live_kickstart
from composer.pipelines.livemedia import TAR_COMPRESSORS, LivemediaPlan, compose_livemedia, root_fstype
from composer.preflight import check_compose_inputs, check_kernel_arg
from composer.run import ComposerError, output_path, require, set_logging

# lmc options that need its VM (qemu) or anaconda: (option, why).
NEEDS_VM = {
    "--iso": "the installer ISO for the VM",
    "--location": "the installer tree for the VM",
    "--ram": "the VM's memory",
    "--cpu": "the VM's CPU",
    "--vcpus": "the VM's CPUs",
    "--vnc": "the VM's display",
    "--arch": "the VM's architecture",
    "--kernel-args": "the installer's kernel in the VM",
    "--firmware": "the VM's UEFI firmware",
    "--virt-uefi": "the VM's UEFI boot",
    "--no-kvm": "the VM",
    "--with-rng": "the VM's RNG",
    "--anaconda-arg": "anaconda",
    "--image-only": "anaconda's image (there is no separate install step to stop after)",
    "--make-ami": "anaconda's disk image",
    "--make-appliance": "anaconda's disk image",
    "--make-ostree-live": "anaconda's ostree install",
    "--make-oci": "anaconda's disk image",
    "--make-vagrant": "anaconda's disk image",
    "--make-tar-disk": "anaconda's disk image",
    "--armplatform": "anaconda's ARM disk image",
}
# lmc options composer does not do yet: (option, what instead).
NOT_YET = {
    "--disk-image": "composer installs the kickstart itself",
    "--fs-image": "composer installs the kickstart itself",
    "--keep-image": "",
    "--image-type": "",
    "--qcow2": "",
    "--qemu-arg": "",
    "--image-size-align": "",
    "--app-name": "",
    "--app-template": "",
    "--app-file": "",
    "--oci-config": "",
    "--oci-runtime": "",
    "--vagrant-metadata": "",
    "--vagrantfile": "",
    "--tar-disk-name": "",
}
SQUASHFS_COMPRESSIONS = tuple(c.value for c in Compression)
_VALUELESS = {
    "--virt-uefi",
    "--no-kvm",
    "--image-only",
    "--make-ami",
    "--make-appliance",
    "--make-ostree-live",
    "--make-oci",
    "--make-vagrant",
    "--make-tar-disk",
    "--keep-image",
    "--qcow2",
}


# (argparse dest, what the warning calls it) of lmc options accepted but not acted on.
_NOT_HONOURED = (
    ("domacboot", "--macboot (no Mac boot image)"),
    ("live_rootfs_keep_size", "--live-rootfs-keep-size (rootfs.img is sized to the tree plus its free room)"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 as argparse (and lmc) does
        print(f"composer livemedia: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def livemedia_parser(prog: str = "composer livemedia") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Create live media from a kickstart (livemedia-creator --no-virt, built by composer)")
    action = p.add_mutually_exclusive_group(required=True)
    for make in ("iso", "pxe-live", "fsimage", "tar", "disk"):
        action.add_argument(f"--make-{make}", dest="make", action="store_const", const=make)
    for opt in [o for o in (*NEEDS_VM, *NOT_YET) if o.startswith("--make-")]:
        action.add_argument(opt, dest="make", action="store_const", const=opt)
    p.add_argument("--ks", action="append", type=Path, default=[], help="the kickstart (one; %%include is followed)")
    p.add_argument("--no-virt", action="store_true", help="accepted: the only mode")
    p.add_argument("--iso-only", action="store_true", help="keep only the ISO in --resultdir")
    p.add_argument("--iso-name", default=None, help="its name with --iso-only (default boot.iso)")
    p.add_argument("--proxy", default=None, help="proxy URL for the package downloads")
    p.add_argument("--logfile", default="./livemedia.log", type=Path)
    p.add_argument("--lorax-templates", type=Path, default=None, help="a template set (default: the product's)")
    p.add_argument("--tmp", default=Path("/var/tmp"), type=Path, help="the work directory is made inside")
    p.add_argument("--resultdir", dest="result_dir", type=Path, default=None, help="must not exist yet")
    p.add_argument("--macboot", action="store_true", default=False, dest="domacboot")
    p.add_argument("--nomacboot", action="store_false", dest="domacboot")
    p.add_argument("--extra-boot-args", default="", help="more kernel arguments for the boot menus")
    p.add_argument("-r", "--release", default="")
    p.add_argument("-t", "--variant", default="")
    p.add_argument("-b", "--bugurl", default="your distribution provided bug reporting tool")
    p.add_argument("--isfinal", action="store_true", default=False)
    p.add_argument("--image-name", default=None, help="output name of --make-tar/--make-fsimage/--make-disk")
    p.add_argument("--fs-label", default="Anaconda")
    p.add_argument("--compression", default="xz", help="--make-tar: xz, lzma, gzip, bzip2; the squashfs: xz, zstd, lz4")
    p.add_argument("--compress-arg", action="append", dest="compress_args", default=[])
    p.add_argument("--dracut-conf", type=Path, default=None)
    p.add_argument("--dracut-arg", action="append", dest="dracut_args", default=[])
    p.add_argument("--live-rootfs-size", type=int, default=0, help="GiB of free room in rootfs.img")
    p.add_argument("--live-rootfs-keep-size", action="store_true")
    p.add_argument("--project", default="Red Hat Enterprise Linux", metavar="PRODUCT")
    p.add_argument("-p", "--product", default="", metavar="PRODUCT", help="alias for --project")
    p.add_argument("--releasever", default="10")
    p.add_argument("--volid", default=None)
    p.add_argument("--squashfs-only", action="store_true", help="ignored, as in livemedia-creator")
    p.add_argument("--rootfs-type", default="btrfs", choices=sorted(ROOTFS_MAP), help="default btrfs (composer's)")
    p.add_argument(
        "--osmin",
        action="store_true",
        help="also ship LiveOS/osmin.img.gz in squashfs.img, the minimized-install delta of rootfs.img (squashfs-ext4)",
    )
    p.add_argument("--timeout", default=None, type=int, help="cancel the build after this many minutes")
    p.add_argument("-V", action="version", version=f"livemedia-creator {__version__} (composer {__version__})")
    refused = p.add_argument_group("refused (need a VM or anaconda, or not yet)")
    for opt in (*NEEDS_VM, *NOT_YET):
        if not opt.startswith("--make-"):
            kind = "store_true" if opt in _VALUELESS else "append"
            refused.add_argument(opt, dest=f"refused_{opt[2:].replace('-', '_')}", default=None, action=kind)
    refused.add_argument("--ovmf-path", dest="refused_firmware", action="append", default=None)
    refused.add_argument("--qcow2-arg", dest="refused_qemu_arg", action="append", default=None)
    return p


def _glue(argv: Sequence[str]) -> list[str]:
    """`--dracut-arg --xz` -> `--dracut-arg=--xz` (the value starts with '-')."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        v = next(it, None) if a in (*PASS_THROUGH_OPTIONS, "--compress-arg", "--extra-boot-args") else None
        out.append(a if v is None else f"{a}={v}")
    return out


def _check_refused(args: argparse.Namespace) -> None:
    if args.make in NEEDS_VM:
        raise ComposerError(f"{args.make}: needs {NEEDS_VM[args.make]}; composer livemedia runs the --no-virt path only")
    if args.make in NOT_YET:
        raise ComposerError(f"{args.make}: not yet supported by composer livemedia ({NOT_YET[args.make]})")
    for opt, why in NEEDS_VM.items():
        if getattr(args, f"refused_{opt[2:].replace('-', '_')}", None):
            raise ComposerError(f"{opt}: needs {why}; composer livemedia runs the --no-virt path only (no VM, no anaconda)")
    for opt, instead in NOT_YET.items():
        if getattr(args, f"refused_{opt[2:].replace('-', '_')}", None):
            raise ComposerError(f"{opt}: not yet supported by composer livemedia" + (f" ({instead})" if instead else ""))


def _check_values(args: argparse.Namespace) -> Path:
    """lmc's own refusals, and composer's checks of what reaches a file name or a menu."""
    # lmc's --compression is the tar's compressor, or the squashfs image's compression.
    if args.make == "tar" and args.compression not in TAR_COMPRESSORS:
        raise ComposerError(f"--compression {args.compression}: for --make-tar one of {', '.join(TAR_COMPRESSORS)}")
    if args.make in ("iso", "pxe-live"):
        if args.compression not in SQUASHFS_COMPRESSIONS:
            raise ComposerError(
                f"--compression {args.compression}: for the squashfs image one of {', '.join(SQUASHFS_COMPRESSIONS)}"
            )
        if args.compress_args:
            raise ComposerError("--compress-arg: not yet supported for the squashfs image (composer picks its options)")
    for option, name in (("--image-name", args.image_name), ("--iso-name", args.iso_name)):
        if name is not None and (not name or "/" in name or name in (".", "..")):
            raise ComposerError(f"{option} {name!r}: a file name in --resultdir, not a path")
    if args.dracut_args and args.dracut_conf:
        raise ComposerError("--dracut-arg and --dracut-conf cannot be used together")
    if args.osmin and ROOTFS_MAP[args.rootfs_type][0] is not RootfsType.EXT4:
        raise ComposerError(
            f"--osmin: needs --rootfs-type squashfs-ext4 (not {args.rootfs_type}): the delta is made with resize2fs -M"
        )
    if args.live_rootfs_size < 0:
        raise ComposerError(f"--live-rootfs-size {args.live_rootfs_size}: GiB, not negative")
    if args.timeout is not None and args.timeout <= 0:
        raise ComposerError(f"--timeout {args.timeout}: minutes, at least 1")
    if args.lorax_templates is not None and not args.lorax_templates.is_dir():
        raise ComposerError(f"--lorax-templates {args.lorax_templates}: no such directory")
    for arg in args.extra_boot_args.split():
        check_kernel_arg("--extra-boot-args", arg)
    if len(args.ks) != 1:
        raise ComposerError("--ks: give exactly one kickstart" if args.ks else "--ks: a kickstart is required")
    return args.result_dir if args.result_dir is not None else args.tmp / "lmc-result"


def _config(args: argparse.Namespace, resultdir: Path) -> Config:
    return Config(
        product=args.product or args.project,
        version=args.releasever,
        outdir=output_path(resultdir),
        proxy=args.proxy,
        release=args.release,
        variant=args.variant,
        bugurl=args.bugurl,
        isfinal=args.isfinal,
        rootfs_type=ROOTFS_MAP[args.rootfs_type][0],
        osmin=args.osmin,
        compression=Compression(args.compression) if args.compression in SQUASHFS_COMPRESSIONS else Compression.XZ,
        rootfs_size=(args.live_rootfs_size << 30) if args.live_rootfs_size else None,
        dracut_args=tuple(args.dracut_args),
        dracut_conf=args.dracut_conf,
        workdir=trusted_dir(args.tmp, "--tmp"),  # as lorax's --tmp: no other user may change what is built there
        # anaconda does not check signatures of the kickstart's url/repo sources.
        nogpgcheck=True,
        cachedir=DEFAULT_CACHEDIR,
        source_date_epoch=source_date_epoch(None),
        templatedir=args.lorax_templates.resolve() if args.lorax_templates else None,
    )


def plan_from_argv(argv: Sequence[str]) -> LivemediaPlan:
    """Parse livemedia-creator's argv (exit 2 on a usage error, as lmc) into a checked plan."""
    args = livemedia_parser().parse_args(_glue(argv))
    _check_refused(args)
    resultdir = _check_values(args)
    check_logfile(args.logfile, "--logfile")
    set_logging(logfile=args.logfile)
    ks = load_live_kickstart(args.ks[0])
    cfg = dataclasses.replace(
        apply_kickstart(_config(args, resultdir), ks.packages),
        nodocs=ks.nodocs,
        weak_deps=ks.weak_deps,
        install_langs=ks.install_langs,
    )
    volid = check_volid(args.volid) if args.volid else default_volid(cfg.product, cfg.version, cfg.arch)
    root_fstype(ks.system.root_fstype, args.make)  # one --make-fsimage cannot make: now, not after the install
    disk = None
    if args.make == "disk":
        disk = plan_disk(ks.system.disk, str(args.ks[0]))
        require("sfdisk", "mkswap", "mkfs.fat", "mmd", "mcopy")  # the disk's tools on the host (mkfs: the rootfs's)
        # The disk layout commands are --make-disk's: not "ignored" in the report.
        kept = tuple(c for c in ks.system.ignored if c not in ("clearpart", "zerombr", "reqpart"))
        ks = dataclasses.replace(ks, system=dataclasses.replace(ks.system, ignored=kept))
    check_compose_inputs(cfg, "livemedia", ks=args.ks[0])
    warnings = [label for dest, label in _NOT_HONOURED if getattr(args, dest)]
    return LivemediaPlan(
        warnings=tuple(warnings),
        config=cfg,
        kickstart=ks,
        make=args.make,
        volid=check_volid(volid),
        kernel_args=ks.packages.kernel_args + tuple(args.extra_boot_args.split()),
        fs_label=args.fs_label,
        image_name=args.image_name,
        iso_only=args.iso_only,
        iso_name=args.iso_name,
        compression=args.compression,
        compress_args=tuple(args.compress_args),
        timeout_min=args.timeout,
        disk=disk,
    )


def run_livemedia(argv: Sequence[str]) -> int:
    """`composer livemedia ARGS` and the `livemedia-creator` command (through composer.cli.main)."""
    return compose_livemedia(plan_from_argv(argv))
