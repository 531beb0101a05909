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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

from composer import dracut, treecheck
from composer.cache import cached_install, code_digest
from composer.config import Config, RootfsType
from composer.dnf import RPMDB, DnfSession, dnf_config, tree_ids
from composer.images.rootfs import make_rootfs, tree_size
from composer.images.sparse import allocated_size, copy_sparse
from composer.images.squashfs import make_squashfs, squashfs_beside
from composer.live.delta import create_delta
from composer.outputs import ram
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.manifest import write_manifest
from composer.outputs.media import boot_kernels
from composer.product import (
    CLEANUP_TEMPLATE,
    INSTALL_TEMPLATE,
    POSTINSTALL_TEMPLATE,
    pick_branding,
    template_dir,
    template_variables,
)
from composer.reproducible import config_seed, normalize_tree
from composer.run import ComposerError, atomic_dir, in_tree_argv, info, locked_mkdir, remove_stale, run, stage
from composer.templates import Branding, Product, TemplateRunner


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
    tree_check: dict[str, int]  # what the tree check verified (see composer.treecheck)
    initramfs_ram: dict[str, int]  # kver: bytes its initramfs's files take once unpacked (outputs.ram)


def _cpu_seconds() -> float:
    """User + system time of composer and every command it waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_child_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


# Work directories are named WORKDIR_PREFIX + random; a killed build's one is removed by the next run.
WORKDIR_PREFIX = "composer-build."
KEPT_PREFIX = "composer-kept."  # --keep-workdir


@contextlib.contextmanager
def workdir_for(cfg: Config):
    option, parent = ("--workdir", cfg.workdir) if cfg.workdir is not None else ("the work directory", Path("/var/tmp"))
    if any(ord(c) < 32 or c == "\x7f" for c in str(parent)):
        # dnf and rpm take their paths from config lines: a newline would start another.
        raise ComposerError(f"{option} {str(parent)!r}: a control character in the path; choose a path without")
    parent.mkdir(parents=True, exist_ok=True)
    # Work where the path leads: bubblewrap makes its mount points below a resolved path
    # only (a /var/tmp or build volume linked elsewhere is common).
    parent = Path(os.path.realpath(parent))
    remove_stale(parent, WORKDIR_PREFIX + "*")
    d = parent / (WORKDIR_PREFIX + secrets.token_hex(4))
    fd = locked_mkdir(d)
    # Where a build ran, whether or not dnf ran (a tree cache hit runs none).
    info(f"work directory {d}, cache {cfg.cachedir if cfg.use_cache else '(none: --no-cache)'}")
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
    templatedir = template_dir(cfg)
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

    dnfcfg = dnf_config(cfg)
    session = DnfSession(tree, dnfcfg, work)
    if cfg.source_date_epoch is not None:
        session.env["SOURCE_DATE_EPOCH"] = str(cfg.source_date_epoch)  # rpm: install times in its database
    checked: dict[str, int] = {}

    def verify_packages(only: set[str] | None = None) -> list[str]:
        """The tree against the rpm database: every packaged path with rpm's type, mode and owner."""
        snap, packaged = treecheck.snapshot(tree), session.packaged_files()
        checked["packaged_paths"] = len(packaged)
        return treecheck.check_packaged(snap, packaged, *tree_ids(tree), only=only)

    ledger = treecheck.Ledger(lambda paths: treecheck.fail_on(verify_packages(paths), "after a package transaction"))
    ledger.record("rpm (its database)", [RPMDB])
    variables = template_variables(cfg)
    # lorax gives the runtime templates the product name in lower case.
    product = cast(Product, variables["product"])  # template_variables() puts a Product there
    variables["product"] = dataclasses.replace(product, name=cfg.product.lower())
    branding = pick_branding(session.providers("system-release"), cfg.variant) if cfg.branding else Branding()
    if cfg.branding:
        variables["branding"] = branding
        info(f"branding: {branding.release or 'no system-release package found'}"
             + (f", {branding.logos}" if branding.logos else ""))
    runner = TemplateRunner(tree=tree, templatedir=templatedir, variables=variables, pkgmgr=session,
                            recorder=ledger)

    def pending_transaction(who: str) -> None:
        """Requests no template's run_pkg_transaction carried out (e.g. --installpkgs)."""
        if session.has_pending():
            with ledger.observe(tree, who, packages=True):
                session.run_transaction()

    def install() -> None:
        if branding.release and branding.logos:
            # Before the templates, as lorax; a product without a logos package still builds.
            session.install([branding.release], required=True)
            session.install([branding.logos], required=False)
        if cfg.installpkgs:
            session.install(cfg.installpkgs, required=True)
        runner.run(templatedir / INSTALL_TEMPLATE)
        pending_transaction("composer: --installpkgs")
        # Everything in the fresh tree came from a package transaction or a template command.
        treecheck.fail_on(treecheck.check_changes({}, treecheck.snapshot(tree), ledger), "after the install stage")

    with timed("install"):
        # A tree from cachedir/trees when its inputs match (see composer.cache); checked either way.
        packages = cached_install(cfg, session, runner, templatedir / INSTALL_TEMPLATE, install, verify=verify_packages)
    installed = treecheck.snapshot(tree)
    # What the install stage recorded is in `installed` now; later changes must be asked for anew.
    ledger.forget()
    ledger.record("rpm (its database)", [RPMDB])
    sizes["tree_installed"] = tree_size(tree).blocks_bytes
    info(f"tree: {len(packages)} packages, {sizes['tree_installed'] / 2**20:.0f} MiB, "
         f"{checked.get('packaged_paths', 0)} packaged paths as rpm says")

    with timed("postinstall"):
        configdir = runner.stage_config_files()  # lorax: config_files/ into the tree for postinstall
        runner.run(templatedir / POSTINSTALL_TEMPLATE, {"configdir": configdir})
        for tmpl in cfg.add_templates:
            if not tmpl.is_file():
                raise ComposerError(f"--add-template {tmpl}: no such file")
            runner.run(tmpl.resolve())
        pending_transaction("composer: package requests of the postinstall templates")

    kernels = dracut.take_kernels(tree, work / "kernels")

    with timed("cleanup"):
        runner.run(templatedir / CLEANUP_TEMPLATE)
        if getattr(runner, "kmods_changed", True):
            for k in kernels:
                # The tree's own depmod, so the index matches its kmod.
                with ledger.observe(tree, "composer: depmod"):
                    run(in_tree_argv(tree, ["depmod", "-a", k.version]))
    sizes["tree_cleaned"] = tree_size(tree).blocks_bytes
    info(f"tree after cleanup: {sizes['tree_cleaned'] / 2**20:.0f} MiB")

    dracut_inputs = dracut.DracutInputs(cfg.rootfs_type, cfg.dracut_args, cfg.dracut_conf, templatedir,
                                        template_variables(cfg))
    initramfs_ram: dict[str, int] = {}

    def make_initramfs(plan: dracut.DracutPlan) -> dict[str, Path]:
        with timed("dracut"):
            made = dracut.build_initramfs(tree, kernels, work / "initramfs", plan, source_date_epoch=cfg.source_date_epoch)
        # dracut ran in the tree: it must leave it as it found it.
        after = treecheck.differences(shipped, treecheck.snapshot(tree))
        treecheck.fail_on([f"{p}: {what}" for p, what in sorted(after.items())], "after dracut")
        for kver, path in made.items():
            sizes[f"initramfs-{kver}"] = path.stat().st_size
            # The RAM budget's largest term, counted while mksquashfs still runs.
            initramfs_ram[kver] = ram.unpacked_ram(path)
        return made

    # From here the tree only changes outside /lib/modules: the driver modules dracut gets
    # are compressed on the core the single-threaded steps below leave idle.
    with dracut.modules_beside(tree, kernels, work / "initramfs", dracut_inputs) as pending:
        # Nothing but packages and template commands shaped the tree: no trace of the build host.
        final = treecheck.snapshot(tree)
        treecheck.fail_on(treecheck.check_changes(installed, final, ledger), "after cleanup")
        tree_check = {"packaged_paths_verified": checked.get("packaged_paths", 0), "paths_after_install": len(installed),
                      "paths_shipped": len(final), "changed_by_templates": len(treecheck.differences(installed, final)),
                      "observed_commands": ledger.observed}
        # Always: dnf's history database is a build record, not part of the runtime.
        normalize_tree(tree)
        shipped = treecheck.snapshot(tree)
        squash_src = work / "squashfs-root"
        if cfg.rootfs_type is not RootfsType.SQUASHFS:
            with timed("rootfs"):
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
        dracut_plan = pending.result()

    # The initramfs lives outside the tree (work/initramfs; the outputs pair it with the kernel),
    # so the runtime image does not depend on it. With a rootfs.img, mksquashfs reads only that
    # image: it runs beside dracut (dracut is mostly one process at a time and I/O; mksquashfs
    # fills the cores). dracut's bwrap makes transient mount points in the tree, so whatever reads
    # the tree (mkfs --rootdir here, or mksquashfs for --rootfs-type squashfs) runs before or after it.
    squashfs = work / "squashfs.img"
    if cfg.rootfs_type is RootfsType.SQUASHFS:
        initramfs = make_initramfs(dracut_plan)
        with timed("squashfs"):
            make_squashfs(tree, squashfs, cfg.compression, source_date_epoch=cfg.source_date_epoch)
    else:
        both, cpu0 = time.monotonic(), _cpu_seconds()
        info("squashfs ... (beside dracut)")
        # The wrapper holds only LiveOS/rootfs.img: its times can all be the epoch.
        with squashfs_beside(squash_src, squashfs, cfg.compression, source_date_epoch=cfg.source_date_epoch,
                             all_time=True) as job:
            initramfs = make_initramfs(dracut_plan)
        timings["squashfs"], cpu["squashfs"] = job.wall_s, job.cpu_s
        timings["dracut+squashfs"] = round(time.monotonic() - both, 2)  # the two overlapped: wall of the pair
        # mksquashfs may have been reaped while dracut ran: dracut's share is the rest.
        cpu["dracut"] = round(max(0.0, _cpu_seconds() - cpu0 - job.cpu_s), 2)
        peak_rss_mib["squashfs"] = _peak_child_rss_mib()
    sizes["squashfs"] = squashfs.stat().st_size

    return Runtime(
        tree=tree, kernels=kernels, initramfs=initramfs, squashfs=squashfs,
        packages=packages, sizes=sizes, timings=timings, cpu=cpu, peak_rss_mib=peak_rss_mib,
        treeinfo=dict(getattr(runner, "treeinfo", {}) or {}), tree_check=tree_check, initramfs_ram=initramfs_ram,
    )


def compose_runtime(cfg: Config) -> Path:
    """`composer runtime OUTDIR`: the big initrd per kernel, install.img and a manifest."""
    with compose_dirs(cfg) as (out, work):
        rt = build_runtime(cfg, work)
        start = time.monotonic()
        with stage("outputs"):
            pxe = out / "images" / "pxeboot"
            pxe.mkdir(parents=True)
            copy_sparse(rt.squashfs, out / "images" / "install.img")
            cmdline = runtime_cmdline(cfg.rootfs_type)
            ram_budget: dict[str, ram.RamBudget] = {}
            for bk, k in zip(boot_kernels([k.version for k in rt.kernels]), rt.kernels, strict=True):
                shutil.copy(k.vmlinuz, out / bk.kernel)
                big = out / bk.initrd
                tail = make_big_initrd(rt.initramfs[k.version], rt.squashfs, cmdline, big, mtime=cfg.source_date_epoch or 0)
                # RAM floor, see outputs/ram.py; the initramfs's part was counted beside mksquashfs.
                ram_budget[k.version] = ram.predict_big_initrd(k.vmlinuz, big, appended_at=tail,
                                                               initramfs_unpacked=rt.initramfs_ram[k.version])
                rt.sizes[f"big_initrd-{k.version}"] = big.stat().st_size
            rt.timings["outputs"] = round(time.monotonic() - start, 2)
            write_manifest(out, rt.packages, {
                "composer": code_digest(),  # what made it: its version and a digest of its code
                "product": cfg.product, "version": cfg.version, "arch": cfg.arch,
                "rootfs_type": str(cfg.rootfs_type), "compression": str(cfg.compression),
                "kernels": [k.version for k in rt.kernels], "cmdline": cmdline,
                "sizes": rt.sizes, "timings": rt.timings, "cpu": rt.cpu, "peak_rss_mib": rt.peak_rss_mib,
                "tree_check": rt.tree_check,
                "ram": ram.manifest_record(ram_budget),
            })
        log_summary(rt.sizes, rt.timings, ram_budget)
    info(f"outputs in {cfg.outdir}: images/pxeboot/vmlinuz, images/pxeboot/initrd.img, images/install.img, manifest.json")
    return cfg.outdir


@contextlib.contextmanager
def compose_dirs(cfg: Config) -> Iterator[tuple[Path, Path]]:
    """The skeleton every compose fills: OUTDIR, built under a temporary name and renamed
    into place only when the body succeeds (run.atomic_dir), and a work directory."""
    with atomic_dir(cfg.outdir, force=cfg.force) as out, workdir_for(cfg) as work:
        yield out, work


def log_summary(sizes: Mapping[str, int], timings: Mapping[str, float], budgets: dict[str, ram.RamBudget]) -> None:
    """A compose's last line before its outputs: sizes, stage times and the RAM floors."""
    info("summary: " + json.dumps({"sizes_mib": {k: round(v / 2**20, 1) for k, v in sizes.items()},
                                   "timings_s": timings, "ram_floor_mb": ram.summary_record(budgets)}))
