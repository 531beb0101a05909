"""`composer runtime`: template-driven install tree -> initramfs -> rootfs.img -> squashfs -> big initrd."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import secrets
import shutil
import time
from pathlib import Path

from composer import dracut
from composer.cache import cached_install
from composer.config import Config, RootfsType
from composer.dnf import DnfConfig, DnfSession
from composer.images.rootfs import make_rootfs
from composer.images.sparse import allocated_size, copy_sparse
from composer.images.squashfs import make_squashfs
from composer.live.delta import create_delta
from composer.outputs import bigimage, ram
from composer.outputs.bigimage import make_big_initrd
from composer.outputs.manifest import write_manifest
from composer.reproducible import config_seed, normalize_tree
from composer.run import ComposerError, atomic_dir, in_tree_argv, info, locked_mkdir, remove_stale, run, stage
from composer.templates import TemplateRunner

# The runtime templates of a product, in the order they run.
INSTALL_TEMPLATE = "runtime-install.tmpl"
POSTINSTALL_TEMPLATE = "runtime-postinstall.tmpl"
CLEANUP_TEMPLATE = "runtime-cleanup.tmpl"


def runtime_cmdline(rootfs: RootfsType) -> str:
    """What the big initrd's /etc/cmdline tells dracut: the live image is in the initramfs.

    A read-only root (erofs, or the tree straight in squashfs) gets an overlayfs for its
    writes; a btrfs/ext4 rootfs.img gets dracut's default dm-snapshot over a sparse file.
    """
    return bigimage.runtime_cmdline(overlayfs=rootfs in (RootfsType.EROFS, RootfsType.SQUASHFS))


@dataclasses.dataclass
class Runtime:
    """What the runtime build produced, for the output stages (boot.iso, netboot)."""

    tree: Path
    kernels: list[dracut.Kernel]
    initramfs: dict[str, Path]
    squashfs: Path
    packages: list[str]
    sizes: dict[str, int]
    timings: dict[str, float]
    cpu: dict[str, float]
    peak_rss_mib: dict[str, float]  # largest child process so far (getrusage is cumulative)
    treeinfo: dict[str, dict[str, str]]


def _cpu_seconds() -> float:
    """User + system time of composer and every command it waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_child_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def template_variables(cfg: Config) -> dict[str, object]:
    basearch = {"i686": "i386", "armv7hl": "arm"}.get(cfg.arch, cfg.arch)
    variables: dict[str, object] = {
        "product": cfg.product,
        "version": cfg.version,
        "release": cfg.release,
        "variant": cfg.variant,
        "bugurl": cfg.bugurl,
        "isfinal": cfg.isfinal,
        "arch": cfg.arch,
        "basearch": basearch,
        "rootfs_type": str(cfg.rootfs_type),
    }
    variables.update(dict(cfg.add_template_vars))
    return variables


def du(path: Path) -> int:
    """Allocated bytes below path, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in [path, *path.rglob("*")]:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total


# Work directories are named WORKDIR_PREFIX + random; a killed build's one is removed by the next run.
WORKDIR_PREFIX = "composer-build."
KEPT_PREFIX = "composer-kept."  # --keep-workdir


@contextlib.contextmanager
def workdir_for(cfg: Config):
    parent = cfg.workdir if cfg.workdir is not None else Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, WORKDIR_PREFIX + "*")
    d = parent / (WORKDIR_PREFIX + secrets.token_hex(4))
    fd = locked_mkdir(d)
    try:
        yield d
    finally:
        if cfg.keep_workdir:
            # Out of the WORKDIR_PREFIX namespace, or the next build would delete it as stale.
            kept = d.with_name(KEPT_PREFIX + d.name.removeprefix(WORKDIR_PREFIX))
            d.rename(kept)
            info(f"work directory kept: {kept}")
        else:
            shutil.rmtree(d, ignore_errors=True)
        os.close(fd)


def build_runtime(cfg: Config, work: Path) -> Runtime:
    """Install, configure and clean the tree, then make the initramfs and squashfs.img."""
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    peak_rss_mib: dict[str, float] = {}
    sizes: dict[str, int] = {}
    tree = work / "tree"
    templatedir = cfg.template_dir
    if cfg.osmin and cfg.rootfs_type is not RootfsType.EXT4:
        # Checked before the long build: only ext4 can be shrunk without a mount.
        raise ComposerError(f"--osmin: needs --rootfs-type ext4 (not {cfg.rootfs_type}): "
                            "the minimized delta is made with resize2fs -M")

    def timed(name: str):
        @contextlib.contextmanager
        def cm():
            start, cpu0 = time.monotonic(), _cpu_seconds()
            with stage(name):
                yield
            timings[name] = round(time.monotonic() - start, 2)
            cpu[name] = round(_cpu_seconds() - cpu0, 2)
            peak_rss_mib[name] = _peak_child_rss_mib()
        return cm()

    dnfcfg = DnfConfig(
        releasever=cfg.version,
        arch=cfg.arch,
        sources=cfg.sources,
        repofiles=cfg.repofiles,
        excludepkgs=cfg.excludepkgs,
        cachedir=cfg.cachedir / "dnf",
        nogpgcheck=cfg.nogpgcheck,
    )
    session = DnfSession(tree, dnfcfg, work)
    if cfg.source_date_epoch is not None:
        session.env["SOURCE_DATE_EPOCH"] = str(cfg.source_date_epoch)  # rpm: install times in its database
    runner = TemplateRunner(tree=tree, templatedir=templatedir, variables=template_variables(cfg), pkgmgr=session)

    def install() -> None:
        if cfg.installpkgs:
            session.install(cfg.installpkgs, required=True)
        runner.run(templatedir / INSTALL_TEMPLATE)
        session.run_transaction()  # in case a template forgot run_pkg_transaction

    with timed("install"):
        # A tree from cachedir/trees when its inputs match (see composer.cache).
        packages = cached_install(cfg, session, runner, templatedir / INSTALL_TEMPLATE, install)
    sizes["tree_installed"] = du(tree)
    info(f"tree: {len(packages)} packages, {sizes['tree_installed'] / 2**20:.0f} MiB")

    with timed("postinstall"):
        runner.run(templatedir / POSTINSTALL_TEMPLATE)
        for tmpl in cfg.add_templates:
            if not tmpl.is_file():
                raise ComposerError(f"--add-template {tmpl}: no such file")
            runner.run(tmpl.resolve())
        session.run_transaction()

    kernels = dracut.take_kernels(tree, work / "kernels")

    with timed("cleanup"):
        runner.run(templatedir / CLEANUP_TEMPLATE)
        if getattr(runner, "kmods_changed", True):
            for k in kernels:
                # The tree's own depmod, so the index matches its kmod.
                run(in_tree_argv(tree, ["depmod", "-a", k.version]))
    sizes["tree_cleaned"] = du(tree)
    info(f"tree after cleanup: {sizes['tree_cleaned'] / 2**20:.0f} MiB")

    with timed("dracut"):
        initramfs = dracut.build_initramfs(
            tree, kernels, work / "initramfs", rootfs=cfg.rootfs_type,
            dracut_args=cfg.dracut_args, dracut_conf=cfg.dracut_conf,
            source_date_epoch=cfg.source_date_epoch,
            templatedir=templatedir, variables=template_variables(cfg),
        )
    for kver, path in initramfs.items():
        sizes[f"initramfs-{kver}"] = path.stat().st_size

    squashfs = work / "squashfs.img"
    with timed("rootfs"):
        # Always: dnf's history database is a build record, not part of the runtime.
        normalize_tree(tree)
        if cfg.rootfs_type is RootfsType.SQUASHFS:
            squash_src = tree
        else:
            squash_src = work / "squashfs-root"
            (squash_src / "LiveOS").mkdir(parents=True)
            rootfs_img = squash_src / "LiveOS" / "rootfs.img"
            make_rootfs(tree, rootfs_img, cfg.rootfs_type, free=cfg.rootfs_size,
                        source_date_epoch=cfg.source_date_epoch, seed=config_seed(cfg))
            sizes["rootfs_apparent"] = rootfs_img.stat().st_size
            sizes["rootfs_allocated"] = allocated_size(rootfs_img)
            if cfg.osmin:
                # Installers copy the minimized filesystem: snapshot(rootfs.img, osmin.img).
                delta = create_delta(rootfs_img, squash_src / "LiveOS" / "osmin.img.gz",
                                     source_date_epoch=cfg.source_date_epoch)
                sizes["osmin_raw"] = delta.raw_size
                sizes["osmin_gz"] = delta.gz_size
    with timed("squashfs"):
        # The wrapper holds only LiveOS/rootfs.img: its times can all be the epoch.
        make_squashfs(squash_src, squashfs, cfg.compression, source_date_epoch=cfg.source_date_epoch,
                      all_time=squash_src != tree)
    sizes["squashfs"] = squashfs.stat().st_size

    return Runtime(
        tree=tree, kernels=kernels, initramfs=initramfs, squashfs=squashfs,
        packages=packages, sizes=sizes, timings=timings, cpu=cpu, peak_rss_mib=peak_rss_mib,
        treeinfo=dict(getattr(runner, "treeinfo", {}) or {}),
    )


def compose_runtime(cfg: Config) -> Path:
    """`composer runtime OUTDIR`: the big initrd per kernel, install.img and a manifest."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_dir(cfg.outdir, force=cfg.force))
        work = stack.enter_context(workdir_for(cfg))
        rt = build_runtime(cfg, work)
        start = time.monotonic()
        with stage("outputs"):
            pxe = out / "images" / "pxeboot"
            pxe.mkdir(parents=True)
            copy_sparse(rt.squashfs, out / "images" / "install.img")
            cmdline = runtime_cmdline(cfg.rootfs_type)
            ram_budget: dict[str, ram.RamBudget] = {}
            for i, k in enumerate(rt.kernels):
                # The newest kernel gets the plain names boot configs expect.
                suffix = "" if i == 0 else f"-{k.version}"
                shutil.copy(k.vmlinuz, pxe / f"vmlinuz{suffix}")
                big = pxe / f"initrd{suffix}.img"
                make_big_initrd(rt.initramfs[k.version], rt.squashfs, cmdline, big, mtime=cfg.source_date_epoch or 0)
                ram_budget[k.version] = ram.predict("big-initrd", k.vmlinuz, big)  # RAM floor, see outputs/ram.py
                rt.sizes[f"big_initrd-{k.version}"] = big.stat().st_size
            rt.timings["outputs"] = round(time.monotonic() - start, 2)
            write_manifest(out, rt.packages, {
                "product": cfg.product, "version": cfg.version, "arch": cfg.arch,
                "rootfs_type": str(cfg.rootfs_type), "compression": str(cfg.compression),
                "kernels": [k.version for k in rt.kernels], "cmdline": cmdline,
                "sizes": rt.sizes, "timings": rt.timings, "cpu": rt.cpu, "peak_rss_mib": rt.peak_rss_mib,
                "ram": ram.manifest_record(ram_budget),
            })
        summary = {"sizes_mib": {k: round(v / 2**20, 1) for k, v in rt.sizes.items()}, "timings_s": rt.timings,
                   "ram_floor_mb": ram.summary_record(ram_budget)}
        info("summary: " + json.dumps(summary))
    info(f"outputs in {cfg.outdir}: images/pxeboot/vmlinuz, images/pxeboot/initrd.img, images/install.img, manifest.json")
    return cfg.outdir
