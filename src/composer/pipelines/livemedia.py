"""`composer livemedia`: livemedia-creator's no-VM path, from a kickstart, without root.

anaconda is not run: composer installs the kickstart's %packages into a tree and
configures it as anaconda does for an image install (composer.kickstart.apply), then
makes the one output asked for. The stages, over compose.BuildContext:

    start -> %pre -> install (%packages) -> kickstart (the system commands, %post) ->
    one of: dracut + tar | dracut + fsimage | pack + media tree + boot.iso (iso) | pack + pxe-live |
    disk setup + dracut + grub + disk (disk: pipelines.disk)

The ISO is boot-iso's media (pipelines.bootiso) with the live image where dracut's
dmsquash-live looks by default, LiveOS/squashfs.img (holding LiveOS/rootfs.img, btrfs
unless --rootfs-type says otherwise); the boot menus are the product's templates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from composer import dracut
from composer.config import Config, RootfsType
from composer.images.disk import DiskLayout
from composer.images.rootfs import make_rootfs
from composer.images.sparse import copy_sparse
from composer.kickstart import LiveKickstart
from composer.kickstart.apply import apply_system, run_scripts
from composer.pipelines import compose as pipeline
from composer.pipelines.bootiso import MediaOptions, check_boot_menus, make_media
from composer.pipelines.disk import DEFAULT_IMAGE_NAME, initramfs_in_tree, make_disk
from composer.pipelines.netboot import NetbootOptions, netboot_dracut_conf
from composer.pipelines.runtime import compose_dirs, log_summary
from composer.reproducible import config_seed
from composer.run import LOCK_MARKER, ComposerError, info, run, stage
from composer.treecheck import fail_on

LIVE_IMAGE = "LiveOS/squashfs.img"  # dmsquash-live's default rd.live.dir / rd.live.squashimg
PXE_LIVE_IMAGE = "live-rootfs.squashfs.img"  # livemedia-creator's name
MAKES = ("iso", "pxe-live", "fsimage", "tar", "disk")
# --compression of --make-tar: livemedia-creator's four, and their suffixes.
TAR_COMPRESSORS = {"xz": ".xz", "lzma": ".lzma", "gzip": ".gz", "bzip2": ".bz2"}
FSIMAGE_TYPES = {"ext4": RootfsType.EXT4, "btrfs": RootfsType.BTRFS, "erofs": RootfsType.EROFS}


@dataclasses.dataclass(frozen=True)
class LivemediaPlan:
    config: Config
    kickstart: LiveKickstart
    make: str  # one of MAKES
    volid: str
    kernel_args: tuple[str, ...] = ()
    fs_label: str = "Anaconda"
    image_name: str | None = None
    iso_only: bool = False
    iso_name: str | None = None
    compression: str = "xz"
    compress_args: tuple[str, ...] = ()
    timeout_min: int | None = None
    warnings: tuple[str, ...] = ()  # options accepted but not honoured (one line)
    disk: DiskLayout | None = None  # --make-disk: the partition table planned from the kickstart

    def media_options(self) -> MediaOptions:
        return MediaOptions(volid=self.volid, kernel_args=self.kernel_args, stage2=LIVE_IMAGE)


def install(ctx: pipeline.BuildContext, ks: LiveKickstart) -> None:
    """Stage `install`: the kickstart's %packages (excludes already in the dnf config), checked
    against rpm; --ignoremissing: a name or group no repository has is skipped, as anaconda does."""
    with stage("install", ctx.metrics, usage=True):
        missing = ctx.session.missing_groups(ctx.cfg.installpkgs)
        if missing and not ks.ignore_missing:
            raise ks.missing_group(missing[0])  # with its kickstart line: dnf would talk of modules
        if ctx.cfg.installpkgs:
            ctx.session.install(ctx.cfg.installpkgs, required=not ks.ignore_missing)
        with ctx.check.ledger.observe(ctx.tree, "kickstart %packages", packages=True):
            ctx.session.run_transaction()
        ctx.check.check_fresh()
        fail_on(ctx.check.verify_packages(), "after the install stage")
        ctx.packages = ctx.session.nevras()
    ctx.check.installed_now()
    info(f"tree: {len(ctx.packages)} packages installed from the kickstart's %packages")


def configure(ctx: pipeline.BuildContext, ks: LiveKickstart) -> None:
    """Stage `kickstart`: the system commands and %post, recorded for the tree check."""
    with stage("kickstart", ctx.metrics, usage=True), ctx.check.ledger.observe(ctx.tree, "kickstart"):
        apply_system(ctx.tree, ks.system, ctx.work / "ks-scripts")


def make_tar(ctx: pipeline.BuildContext, plan: LivemediaPlan, out: Path) -> Path:
    """Stage `tar`: the tree as livemedia-creator's --make-tar makes it (xattrs, ACLs, numeric
    owners; /dev, /proc, /sys and /run empty), compressed by --compression."""
    name = plan.image_name or f"root.tar{TAR_COMPRESSORS[plan.compression]}"
    with stage("tar", ctx.metrics, usage=True):
        raw = ctx.work / "root.tar"
        argv = ["tar", "--numeric-owner", "--xattrs", "--acls", "--sort=name", "-C", str(ctx.tree), "-cf", str(raw)]
        argv += [f"--exclude=./{d}/*" for d in ("dev", "proc", "sys", "run", "tmp")]
        if ctx.cfg.source_date_epoch is not None:
            argv += [f"--mtime=@{ctx.cfg.source_date_epoch}", "--clamp-mtime"]
        run([*argv, "."])
        # xz on every core (livemedia-creator's is single-threaded: 298 s of a 331 s build here).
        threads = (
            ["-T0"] if plan.compression == "xz" and not any(a.startswith(("-T", "--threads")) for a in plan.compress_args) else []
        )
        run([plan.compression, *threads, *plan.compress_args, "-f", str(raw)])
        shutil.move(str(raw) + TAR_COMPRESSORS[plan.compression], out / name)
    ctx.metrics.sizes[name] = (out / name).stat().st_size
    return out / name


def root_fstype(ks_fstype: str | None, make: str) -> RootfsType:
    """The kickstart's `part / --fstype` (ext4 as livemedia-creator's default); --make-fsimage
    makes only FSIMAGE_TYPES, a tar goes anywhere (its initramfs then reads ext4)."""
    name = ks_fstype or "ext4"
    fstype = FSIMAGE_TYPES.get(name)
    if fstype is None and make == "fsimage":
        raise ComposerError(f"kickstart part / --fstype={name}: --make-fsimage makes {', '.join(FSIMAGE_TYPES)}")
    return fstype or RootfsType.EXT4


def installed_initramfs(ctx: pipeline.BuildContext, plan: LivemediaPlan) -> None:
    """Stage `dracut` of --make-fsimage and --make-tar: /boot/initramfs-KVER.img per kernel, as
    the kernel package's scriptlet (kernel-install, dracut) leaves it in anaconda's install, so
    the tree boots from a disk that holds it. A tree without a kernel (a container's) gets none."""
    kernels = dracut.find_kernels(ctx.tree)
    if kernels:
        initramfs_in_tree(ctx, kernels, root_fstype(plan.kickstart.system.root_fstype, plan.make).value)


def make_fsimage(ctx: pipeline.BuildContext, plan: LivemediaPlan, out: Path) -> Path:
    """Stage `fsimage`: the tree as one filesystem image labelled --fs-label, of the type
    root_fstype gives, made without a mount."""
    fstype = root_fstype(plan.kickstart.system.root_fstype, plan.make)
    name = plan.image_name or "fsimage.img"
    with stage("fsimage", ctx.metrics, usage=True):
        make_rootfs(
            ctx.tree,
            out / name,
            fstype,
            free=ctx.cfg.rootfs_size,
            label=plan.fs_label,
            source_date_epoch=ctx.cfg.source_date_epoch,
            seed=config_seed(ctx.cfg),
        )
    ctx.metrics.sizes[name] = (out / name).stat().st_size
    return out / name


def make_iso(ctx: pipeline.BuildContext, plan: LivemediaPlan, out: Path) -> Path:
    """Stages `pack`, `media tree`, `boot.iso`; --iso-only keeps the ISO alone, named --iso-name."""
    pipeline.pack(ctx)
    rt = ctx.runtime()
    budgets = make_media(ctx.cfg, plan.media_options(), rt, out, ctx.work)
    log_summary(rt.metrics.sizes, rt.metrics.timings, budgets)
    iso = out / "images" / "boot.iso"
    return keep_only(out, iso, plan.iso_name or "boot.iso", ctx.work) if plan.iso_only else iso


def keep_only(out: Path, iso: Path, name: str, work: Path) -> Path:
    """--iso-only: `out` (the result being built) left holding the ISO alone, as `name`."""
    os.replace(iso, work / "iso-only.iso")
    for p in out.iterdir():
        if p.name != LOCK_MARKER:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    os.replace(work / "iso-only.iso", out / name)
    return out / name


def make_pxe_live(ctx: pipeline.BuildContext, plan: LivemediaPlan, out: Path) -> Path:
    """Stages `pack` and `pxe-live`: per kernel vmlinuz and initramfs, the live image and
    PXE_CONFIG, as livemedia-creator's --make-pxe-live lays them out."""
    pipeline.pack(ctx)
    with stage("pxe-live", ctx.metrics):
        copy_sparse(ctx.squashfs, out / PXE_LIVE_IMAGE)
        args = " ".join(("rd.live.image", "rd.neednet=1", "ip=dhcp", *ctx.cfg.rootfs_type.live_args, *plan.kernel_args))
        lines = ["# PXE configuration made by composer livemedia; <PXE_DIR> and <URL> are yours to fill in"]
        for k in ctx.kernels:
            kernel, initrd = f"vmlinuz-{k.version}", f"initramfs-{k.version}.img"
            shutil.copy(k.vmlinuz, out / kernel)
            shutil.copy(ctx.initramfs[k.version], out / initrd)
            lines += [f"kernel <PXE_DIR>/{kernel}", f"append initrd=<PXE_DIR>/{initrd} root=live:<URL>/{PXE_LIVE_IMAGE} {args}"]
        (out / "PXE_CONFIG").write_text("\n".join(lines) + "\n")
    ctx.metrics.sizes[PXE_LIVE_IMAGE] = (out / PXE_LIVE_IMAGE).stat().st_size
    return out


@contextlib.contextmanager
def _timeout(minutes: int | None) -> Iterator[None]:
    """livemedia-creator's --timeout: the build is cancelled (and cleaned up) after that long."""
    if not minutes:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise ComposerError(f"--timeout {minutes}: the build took longer than {minutes} minutes; cancelled")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(minutes * 60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def build(plan: LivemediaPlan, out: Path, work: Path) -> Path:
    """The stages, in order, for the one output the plan asks for."""
    cfg = plan.config
    if plan.make == "pxe-live":
        # The initramfs fetches the live image over the network: the product's netboot
        # dracut configuration (livenet, a network handler, NIC drivers), as netboot's split initrd.
        cfg = netboot_dracut_conf(cfg, NetbootOptions(url="", split=True), work)
    ctx = pipeline.start(cfg, work)
    with stage("%pre", ctx.metrics):
        run_scripts("%pre", plan.kickstart.system, work / "ks-scripts", None)
    install(ctx, plan.kickstart)
    configure(ctx, plan.kickstart)
    if plan.make in ("iso", "pxe-live"):
        ctx.kernels = dracut.take_kernels(ctx.tree, ctx.work / "kernels")
        return make_iso(ctx, plan, out) if plan.make == "iso" else make_pxe_live(ctx, plan, out)
    if plan.make == "disk":
        assert plan.disk is not None
        name = plan.image_name or DEFAULT_IMAGE_NAME
        made = make_disk(ctx, plan.disk, out, name=name, fs_label=plan.fs_label, kernel_args=plan.kernel_args)
        log_summary(ctx.metrics.sizes, ctx.metrics.timings, {})
        return made
    pipeline.seal(ctx)
    installed_initramfs(ctx, plan)
    made = make_tar(ctx, plan, out) if plan.make == "tar" else make_fsimage(ctx, plan, out)
    log_summary(ctx.metrics.sizes, ctx.metrics.timings, {})
    return made


def compose_livemedia(plan: LivemediaPlan) -> int:
    """The build: RESULTDIR appears only when it succeeded (pipelines.runtime.compose_dirs)."""
    cfg = plan.config
    if plan.make == "iso":
        check_boot_menus(cfg, plan.media_options())  # a template error stops it now, not after the install
    if plan.warnings:
        info("livemedia: accepted but not honoured as livemedia-creator does: " + "; ".join(plan.warnings))
    unused = [u for u in plan.kickstart.packages.unused if u.startswith(("url ", "repo "))]
    unused += plan.kickstart.not_yet
    if unused:
        info(f"kickstart {plan.kickstart.packages.path}: not yet honoured: {', '.join(unused)}")
    with _timeout(plan.timeout_min), compose_dirs(cfg) as (out, work):
        made = build(plan, out, work).relative_to(out).as_posix()
    info(f"outputs in {cfg.outdir}: {made}")
    return 0
