"""`composer runtime`: template-driven install tree -> initramfs -> rootfs.img -> squashfs -> big initrd."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from composer.cache import code_digest
from composer.config import Config
from composer.images.sparse import copy_sparse
from composer.outputs import ram
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.manifest import write_manifest
from composer.outputs.media import boot_kernels
from composer.pipelines import compose as pipeline
from composer.pipelines.compose import Runtime
from composer.run import ComposerError, atomic_dir, info, locked_mkdir, remove_stale, stage

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
    ctx = pipeline.start(cfg, work)
    pipeline.install(ctx)
    pipeline.postinstall(ctx)
    pipeline.cleanup(ctx)
    pipeline.pack(ctx)
    return ctx.runtime()


def compose_runtime(cfg: Config) -> Path:
    """`composer runtime OUTDIR`: the big initrd per kernel, install.img and a manifest."""
    with compose_dirs(cfg) as (out, work):
        rt = build_runtime(cfg, work)
        budgets = runtime_outputs(cfg, rt, out)
        log_summary(rt.metrics.sizes, rt.metrics.timings, budgets)
    info(f"outputs in {cfg.outdir}: images/pxeboot/vmlinuz, images/pxeboot/initrd.img, images/install.img, manifest.json")
    return cfg.outdir


def runtime_outputs(cfg: Config, rt: Runtime, out: Path) -> dict[str, ram.RamBudget]:
    """Stage `outputs` of `composer runtime`: install.img, per kernel its vmlinuz and big initrd
    (initramfs + squashfs.img), then manifest.json; returns the RAM budget per kernel."""
    with stage("outputs", rt.metrics) as span:
        (out / "images" / "pxeboot").mkdir(parents=True)
        copy_sparse(rt.squashfs, out / "images" / "install.img")
        cmdline = runtime_cmdline(cfg.rootfs_type)
        budgets: dict[str, ram.RamBudget] = {}
        for bk, k in zip(boot_kernels([k.version for k in rt.kernels]), rt.kernels, strict=True):
            shutil.copy(k.vmlinuz, out / bk.kernel)
            big = out / bk.initrd
            tail = make_big_initrd(rt.initramfs[k.version], rt.squashfs, cmdline, big, mtime=cfg.source_date_epoch or 0)
            # RAM floor, see outputs/ram.py; the initramfs's part was counted beside mksquashfs.
            budgets[k.version] = ram.predict_big_initrd(
                k.vmlinuz, big, appended_at=tail, initramfs_unpacked=rt.initramfs_ram[k.version]
            )
            rt.metrics.sizes[f"big_initrd-{k.version}"] = big.stat().st_size
        rt.metrics.record("outputs", span)  # before the manifest, which lists it
        m = rt.metrics
        write_manifest(
            out,
            rt.packages,
            {
                "composer": code_digest(),  # what made it: its version and a digest of its code
                "product": cfg.product,
                "version": cfg.version,
                "arch": cfg.arch,
                "rootfs_type": str(cfg.rootfs_type),
                "compression": str(cfg.compression),
                "kernels": [k.version for k in rt.kernels],
                "cmdline": cmdline,
                "sizes": m.sizes,
                "timings": m.timings,
                "cpu": m.cpu,
                "peak_rss_mib": m.peak_rss_mib,
                "tree_check": rt.tree_check,
                "ram": ram.manifest_record(budgets),
            },
        )
    return budgets


@contextlib.contextmanager
def compose_dirs(cfg: Config) -> Iterator[tuple[Path, Path]]:
    """The skeleton every compose fills: OUTDIR, built under a temporary name and renamed
    into place only when the body succeeds (run.atomic_dir), and a work directory."""
    with atomic_dir(cfg.outdir, force=cfg.force) as out, workdir_for(cfg) as work:
        yield out, work


def log_summary(sizes: Mapping[str, int], timings: Mapping[str, float], budgets: dict[str, ram.RamBudget]) -> None:
    """A compose's last line before its outputs: sizes, stage times and the RAM floors."""
    info(
        "summary: "
        + json.dumps(
            {
                "sizes_mib": {k: round(v / 2**20, 1) for k, v in sizes.items()},
                "timings_s": timings,
                "ram_floor_mb": ram.summary_record(budgets),
            }
        )
    )
