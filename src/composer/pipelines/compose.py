"""The compose as named stages over one build context.

A pipeline is a list of stages, each a function of a `BuildContext` (mkosi's
`build_image` is the model). Every pipeline starts with the runtime's:

    start (the context: dnf session, template runner, tree check)
    install -> postinstall -> cleanup -> pack (tree check, rootfs.img, initramfs, squashfs.img)

and then makes its outputs from the `Runtime` they leave: `composer runtime` the big
initrd (runtime.runtime_outputs), boot-iso the media tree and boot.iso
(bootiso.media_tree, bootiso.boot_iso), netboot its tree (netboot.netboot_tree),
lorax the media by its arch template (pipelines.lorax.make_lorax_media). Each stage records
its time into the one `Metrics` (run.stage) that the manifest and the summary line
read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import cast

from composer import dracut, treecheck
from composer.cache import cached_install
from composer.config import Config, RootfsType
from composer.dnf import RPMDB, DnfSession, dnf_config, tree_ids
from composer.images.rootfs import make_rootfs, tree_size
from composer.images.sparse import allocated_size
from composer.images.squashfs import make_squashfs, squashfs_beside
from composer.live.delta import create_delta
from composer.outputs import ram
from composer.product import (
    CLEANUP_TEMPLATE,
    INSTALL_TEMPLATE,
    POSTINSTALL_TEMPLATE,
    pick_branding,
    template_dir,
    template_variables,
)
from composer.reproducible import config_seed, normalize_tree
from composer.run import (
    ComposerError,
    Metrics,
    Span,
    cpu_seconds,
    in_tree_argv,
    info,
    peak_child_rss_mib,
    run,
    stage,
)
from composer.templates import Branding, Product, TemplateRunner


@dataclasses.dataclass
class Runtime:
    """What the runtime stages produced, for the output stages (big initrd, boot.iso, netboot)."""

    tree: Path
    kernels: list[dracut.Kernel]
    initramfs: dict[str, Path]
    squashfs: Path
    packages: list[str]
    metrics: Metrics  # sizes, timings, cpu, peak_rss_mib; the output stages add theirs
    treeinfo: dict[str, dict[str, str]]
    tree_check: dict[str, int]  # what the tree check verified (see composer.treecheck)
    initramfs_ram: dict[str, int]  # kver: bytes its initramfs's files take once unpacked (outputs.ram)


@dataclasses.dataclass
class BuildContext:
    """One runtime build: its inputs, its tools, and what each stage leaves for the next."""

    cfg: Config
    work: Path
    templatedir: Path
    variables: dict[str, object]  # product.template_variables(cfg), as dracut's templates get them
    session: DnfSession
    check: treecheck.TreeCheck
    branding: Branding
    runner: TemplateRunner
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    packages: list[str] = dataclasses.field(default_factory=list)  # install
    kernels: list[dracut.Kernel] = dataclasses.field(default_factory=list)  # cleanup
    tree_check: dict[str, int] = dataclasses.field(default_factory=dict)  # pack
    initramfs: dict[str, Path] = dataclasses.field(default_factory=dict)  # pack
    initramfs_ram: dict[str, int] = dataclasses.field(default_factory=dict)  # pack

    @property
    def tree(self) -> Path:
        return self.work / "tree"

    @property
    def squashfs(self) -> Path:
        return self.work / "squashfs.img"

    def runtime(self) -> Runtime:
        return Runtime(
            tree=self.tree,
            kernels=self.kernels,
            initramfs=self.initramfs,
            squashfs=self.squashfs,
            packages=self.packages,
            metrics=self.metrics,
            treeinfo=dict(getattr(self.runner, "treeinfo", {}) or {}),
            tree_check=self.tree_check,
            initramfs_ram=self.initramfs_ram,
        )


def start(cfg: Config, work: Path) -> BuildContext:
    """The context every stage works on: the dnf session on work/tree, the tree check, and
    the template runner with lorax's runtime variables (and the branding packages)."""
    tree = work / "tree"
    templatedir = template_dir(cfg)
    if cfg.osmin and cfg.rootfs_type is not RootfsType.EXT4:
        # Checked before the long build: only ext4 can be shrunk without a mount.
        raise ComposerError(
            f"--osmin: needs --rootfs-type ext4 (not {cfg.rootfs_type}): the minimized delta is made with resize2fs -M"
        )
    session = DnfSession(tree, dnf_config(cfg), work)
    if cfg.source_date_epoch is not None:
        session.env["SOURCE_DATE_EPOCH"] = str(cfg.source_date_epoch)  # rpm: install times in its database
    check = treecheck.TreeCheck(tree, session.packaged_files, tree_ids, [RPMDB])
    variables = template_variables(cfg)
    runtime_vars = dict(variables)
    # lorax gives the runtime templates the product name in lower case.
    product = cast(Product, variables["product"])  # template_variables() puts a Product there
    runtime_vars["product"] = dataclasses.replace(product, name=cfg.product.lower())
    branding = pick_branding(session.providers("system-release"), cfg.variant) if cfg.branding else Branding()
    if cfg.branding:
        runtime_vars["branding"] = branding
        info(
            f"branding: {branding.release or 'no system-release package found'}"
            + (f", {branding.logos}" if branding.logos else "")
        )
    runner = TemplateRunner(tree=tree, templatedir=templatedir, variables=runtime_vars, pkgmgr=session, recorder=check.ledger)
    return BuildContext(
        cfg=cfg,
        work=work,
        templatedir=templatedir,
        variables=variables,
        session=session,
        check=check,
        branding=branding,
        runner=runner,
    )


def _pending_transaction(ctx: BuildContext, who: str) -> None:
    """Requests no template's run_pkg_transaction carried out (e.g. --installpkgs)."""
    if ctx.session.has_pending():
        with ctx.check.ledger.observe(ctx.tree, who, packages=True):
            ctx.session.run_transaction()


def _install_fresh(ctx: BuildContext) -> None:
    """The install template into an empty tree (what the tree cache stores)."""
    if ctx.branding.release and ctx.branding.logos:
        # Before the templates, as lorax; a product without a logos package still builds.
        ctx.session.install([ctx.branding.release], required=True)
        ctx.session.install([ctx.branding.logos], required=False)
    if ctx.cfg.installpkgs:
        ctx.session.install(ctx.cfg.installpkgs, required=True)
    ctx.runner.run(ctx.templatedir / INSTALL_TEMPLATE)
    _pending_transaction(ctx, "composer: --installpkgs")
    ctx.check.check_fresh()


def install(ctx: BuildContext) -> None:
    """Stage `install`: the packages and the install template, or a tree from cachedir/trees
    when its inputs match (see composer.cache); checked against rpm either way."""
    with stage("install", ctx.metrics, usage=True):
        ctx.packages = cached_install(
            ctx.cfg,
            ctx.session,
            ctx.runner,
            ctx.templatedir / INSTALL_TEMPLATE,
            lambda: _install_fresh(ctx),
            verify=ctx.check.verify_packages,
        )
    ctx.check.installed_now()
    size = ctx.metrics.sizes["tree_installed"] = tree_size(ctx.tree).blocks_bytes
    info(f"tree: {len(ctx.packages)} packages, {size / 2**20:.0f} MiB, {ctx.check.packaged_paths} packaged paths as rpm says")


def postinstall(ctx: BuildContext) -> None:
    """Stage `postinstall`: config_files/ into the tree, the postinstall template, --add-template files."""
    with stage("postinstall", ctx.metrics, usage=True):
        configdir = ctx.runner.stage_config_files()  # lorax: config_files/ into the tree for postinstall
        ctx.runner.run(ctx.templatedir / POSTINSTALL_TEMPLATE, {"configdir": configdir})
        for tmpl in ctx.cfg.add_templates:
            if not tmpl.is_file():
                raise ComposerError(f"--add-template {tmpl}: no such file")
            ctx.runner.run(tmpl.resolve())
        _pending_transaction(ctx, "composer: package requests of the postinstall templates")


def cleanup(ctx: BuildContext) -> None:
    """Stage `cleanup`: the kernels out of the tree, the cleanup template, then the tree's own depmod."""
    ctx.kernels = dracut.take_kernels(ctx.tree, ctx.work / "kernels")
    with stage("cleanup", ctx.metrics, usage=True):
        ctx.runner.run(ctx.templatedir / CLEANUP_TEMPLATE)
        if getattr(ctx.runner, "kmods_changed", True):
            for k in ctx.kernels:
                # The tree's own depmod, so the index matches its kmod.
                with ctx.check.ledger.observe(ctx.tree, "composer: depmod"):
                    run(in_tree_argv(ctx.tree, ["depmod", "-a", k.version]))
    size = ctx.metrics.sizes["tree_cleaned"] = tree_size(ctx.tree).blocks_bytes
    info(f"tree after cleanup: {size / 2**20:.0f} MiB")


def snapshot(ctx: BuildContext, dest: Path) -> Path:
    """Step `snapshot`: lorax's backup of the install root before the cleanup (its TreeBuilder's
    `inroot`): a copy of the tree made of hard links (`cp -al`: seconds, no data copied). dracut
    and lorax's arch templates read it, so they see what the cleanup removes (/boot's boot
    loaders, the installer's dracut modules). The cleanup replaces files rather than writing
    into them (the template runner's `replace`/`append` break a shared link first), so the
    snapshot keeps the tree as it was."""
    with stage("snapshot", ctx.metrics, usage=True):
        run(["cp", "-al", "--", os.fspath(ctx.tree), os.fspath(dest)])
    return dest


def pack(ctx: BuildContext, dracut_tree: Path | None = None, *, omits: bool = True) -> None:
    """Stage `pack`: the tree checked and sealed, then LiveOS/rootfs.img, the initramfs and squashfs.img.

    From the seal on, the tree only changes outside /lib/modules: the driver modules dracut
    gets are compressed (dracut.modules_beside) on the core the single-threaded steps
    before dracut leave idle. The initramfs lives outside the tree (work/initramfs; the
    outputs pair it with the kernel), so the runtime image does not depend on it. With a
    rootfs.img, mksquashfs reads only that image: it runs beside dracut (dracut is mostly
    one process at a time and I/O; mksquashfs fills the cores). dracut's bwrap makes
    transient mount points in the tree, so whatever reads the tree (mkfs --rootdir here,
    or mksquashfs for --rootfs-type squashfs) runs before or after it. dracut_tree: dracut
    runs there instead (lorax's pre-cleanup snapshot), not in the tree; omits=False: without
    composer's omitted dracut modules (dracut.OMIT_CONF), as lorax's installer initramfs.
    """
    cfg = ctx.cfg
    dtree = dracut_tree if dracut_tree is not None else ctx.tree
    inputs = dracut.DracutInputs(cfg.rootfs_type, cfg.dracut_args, cfg.dracut_conf, ctx.templatedir, ctx.variables, omits=omits)
    with dracut.modules_beside(dtree, ctx.kernels, ctx.work / "initramfs", inputs) as pending:
        seal(ctx)
        if cfg.rootfs_type is not RootfsType.SQUASHFS:
            rootfs_image(ctx)
        dracut_plan = pending.result()
    if cfg.rootfs_type is RootfsType.SQUASHFS and dracut_tree is None:
        initramfs(ctx, dracut_plan, dtree)
        with stage("squashfs", ctx.metrics, usage=True):
            make_squashfs(ctx.tree, ctx.squashfs, cfg.compression, source_date_epoch=cfg.source_date_epoch)
    elif cfg.rootfs_type is RootfsType.SQUASHFS:
        # dracut reads the snapshot, whose transient mount points are not in the tree: the
        # tree's own mksquashfs can run beside it (lorax runs the two one after the other).
        squashfs_beside_dracut(ctx, dracut_plan, dtree, source=ctx.tree)
    else:
        squashfs_beside_dracut(ctx, dracut_plan, dtree)
    ctx.metrics.sizes["squashfs"] = ctx.squashfs.stat().st_size


def seal(ctx: BuildContext) -> None:
    """The tree check after cleanup, then the tree made reproducible: what ships from here."""
    ctx.tree_check = ctx.check.check_final()
    # Always: dnf's history database is a build record, not part of the runtime.
    normalize_tree(ctx.tree)
    ctx.check.ship()


def rootfs_image(ctx: BuildContext) -> None:
    """Step `rootfs`: work/squashfs-root/LiveOS/rootfs.img of the tree (and osmin.img.gz for --osmin)."""
    cfg, sizes = ctx.cfg, ctx.metrics.sizes
    liveos = ctx.work / "squashfs-root" / "LiveOS"
    with stage("rootfs", ctx.metrics, usage=True):
        liveos.mkdir(parents=True)
        rootfs_img = liveos / "rootfs.img"
        make_rootfs(
            ctx.tree,
            rootfs_img,
            cfg.rootfs_type,
            free=cfg.rootfs_size,
            source_date_epoch=cfg.source_date_epoch,
            seed=config_seed(cfg),
        )
        sizes["rootfs_apparent"] = rootfs_img.stat().st_size
        sizes["rootfs_allocated"] = allocated_size(rootfs_img)
        if cfg.osmin:
            # Installers copy the minimized filesystem: snapshot(rootfs.img, osmin.img).
            delta = create_delta(rootfs_img, liveos / "osmin.img.gz", source_date_epoch=cfg.source_date_epoch)
            sizes["osmin_raw"] = delta.raw_size
            sizes["osmin_gz"] = delta.gz_size


def initramfs(ctx: BuildContext, plan: dracut.DracutPlan, tree: Path | None = None) -> None:
    """Step `dracut`: an initramfs per kernel, made in the tree (or `tree`), which it must leave as it found it."""
    with stage("dracut", ctx.metrics, usage=True):
        made = dracut.build_initramfs(
            tree if tree is not None else ctx.tree,
            ctx.kernels,
            ctx.work / "initramfs",
            plan,
            source_date_epoch=ctx.cfg.source_date_epoch,
        )
    ctx.check.check_unchanged("after dracut")
    for kver, path in made.items():
        ctx.metrics.sizes[f"initramfs-{kver}"] = path.stat().st_size
        # The RAM budget's largest term, counted while mksquashfs still runs.
        ctx.initramfs_ram[kver] = ram.unpacked_ram(path)
    ctx.initramfs = made


def squashfs_beside_dracut(
    ctx: BuildContext, plan: dracut.DracutPlan, tree: Path | None = None, *, source: Path | None = None
) -> None:
    """Steps `squashfs` and `dracut` at the same time: mksquashfs of work/squashfs-root (which
    holds only LiveOS/rootfs.img), or of `source` (the tree itself), runs while dracut does.
    timings: each one's wall time and `dracut+squashfs`, the wall time of the pair; cpu:
    mksquashfs's, and dracut's the rest."""
    cfg, metrics = ctx.cfg, ctx.metrics
    both = Span()
    info("squashfs ... (beside dracut)")
    # A wrapper holding only LiveOS/rootfs.img can have all its times the epoch; a tree keeps its own.
    with squashfs_beside(
        source or ctx.work / "squashfs-root",
        ctx.squashfs,
        cfg.compression,
        source_date_epoch=cfg.source_date_epoch,
        all_time=source is None,
    ) as job:
        initramfs(ctx, plan, tree)
    metrics.timings["squashfs"], metrics.cpu["squashfs"] = job.wall_s, job.cpu_s
    metrics.timings["dracut+squashfs"] = both.wall_s()  # the two overlapped: wall of the pair
    # mksquashfs may have been reaped while dracut ran: dracut's share is the rest.
    metrics.cpu["dracut"] = round(max(0.0, cpu_seconds() - both.cpu0 - job.cpu_s), 2)
    metrics.peak_rss_mib["squashfs"] = peak_child_rss_mib()
