"""`composer livemedia --make-disk`: the installed tree as a partitioned raw disk that boots
by BIOS and UEFI, without loop devices, mounts or root (composer.images.disk).

After the kickstart stage: `disk setup` (fstab by UUID, grub.cfg, the mount points, recorded
for the tree check) -> seal -> `dracut` (a plain disk-boot initramfs, in the tree, into
/boot) -> `grub` (the tree's grub-mkimage: core.img, BOOTX64.EFI) -> `disk` (each
filesystem from its part of the tree, the GPT, the partitions copied in, GRUB's MBR).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from composer import dracut
from composer.config import RootfsType
from composer.images.disk import DiskLayout, Partition, depth, fat_uuid, fit, fstab, install_bios_boot, put_partition, write_table
from composer.images.diskboot import BootEntry, early_config, grub_cfg, grub_dir, make_core_images
from composer.images.efiboot import make_efiboot
from composer.images.rootfs import make_rootfs, min_image_size, tree_size
from composer.images.sparse import allocated_size, create_sparse
from composer.pipelines import compose as pipeline
from composer.reproducible import config_seed, fat_serial, seed_uuid
from composer.run import ComposerError, info, run, stage

DEFAULT_IMAGE_NAME = "disk.img"


@dataclasses.dataclass(frozen=True)
class DiskIds:
    """Every UUID of the disk, derived from the build's seed: the same inputs, the same disk."""

    seed: str

    def fs(self, p: Partition) -> str:
        """The filesystem UUID fstab and GRUB name (a FAT volume's serial as blkid shows it)."""
        if p.role == "efi":
            return fat_uuid(fat_serial(self.seed, f"disk-{p.mountpoint}"))
        return str(seed_uuid(self.seed, f"disk-fs-{p.mountpoint}"))

    def part(self, p: Partition) -> str:
        return str(seed_uuid(self.seed, f"disk-part-{p.number}")).upper()

    @property
    def disk(self) -> str:
        return str(seed_uuid(self.seed, "disk-label")).upper()


def _cfg_on_boot(layout: DiskLayout, cfg_dir: str) -> tuple[str, str]:
    """(path of /boot on the partition that holds it, path of grub.cfg there)."""
    on_boot = "" if layout.boot.mountpoint == "/boot" else "/boot"
    return on_boot, f"{on_boot}/{cfg_dir.removeprefix('boot/')}/grub.cfg"


def setup_tree(ctx: pipeline.BuildContext, layout: DiskLayout, ids: DiskIds, kernel_args: tuple[str, ...]) -> list[dracut.Kernel]:
    """Stage `disk setup`: what the disk's system needs in its tree, recorded for the tree check."""
    tree = ctx.tree
    kernels = dracut.find_kernels(tree)
    if not kernels:
        raise ComposerError("--make-disk: no kernel in the tree: the kickstart's %packages must install one")
    cfg_dir = grub_dir(tree)
    on_boot, _ = _cfg_on_boot(layout, cfg_dir)
    root = layout.get("/")
    assert root is not None
    args = " ".join((f"root=UUID={ids.fs(root)}", "ro", *kernel_args))
    entries = []
    with stage("disk setup", ctx.metrics), ctx.check.ledger.observe(tree, "--make-disk: fstab, grub.cfg, mount points"):
        for p in layout.partitions:
            if p.mountpoint.startswith("/"):
                (tree / p.mountpoint.lstrip("/")).mkdir(mode=0o755, parents=True, exist_ok=True)
        (tree / "etc/fstab").write_text(fstab(layout, {p.number: ids.fs(p) for p in layout.partitions}))
        for k in kernels:
            vmlinuz = tree / "boot" / f"vmlinuz-{k.version}"
            if not vmlinuz.exists():  # Fedora keeps it in /usr/lib/modules/KVER; kernel-install copies it
                shutil.copy2(k.vmlinuz, vmlinuz)
            title = f"{ctx.cfg.product} {ctx.cfg.version} ({k.version})"
            entries.append(BootEntry(title, f"{on_boot}/vmlinuz-{k.version}", f"{on_boot}/initramfs-{k.version}.img", args))
        (tree / cfg_dir).mkdir(parents=True, exist_ok=True)
        (tree / cfg_dir / "grub.cfg").write_text(grub_cfg(entries, ids.fs(layout.boot)))
    return kernels


def initramfs_in_tree(ctx: pipeline.BuildContext, kernels: list[dracut.Kernel], root_fstype: str) -> None:
    """Stage `dracut`: a generic initramfs per kernel (the root's filesystem driver added),
    made in the sealed tree, then put in its /boot."""
    ctx.kernels = kernels
    cfg = ctx.cfg
    inputs = dracut.DracutInputs(
        RootfsType(root_fstype), cfg.dracut_args, cfg.dracut_conf, ctx.templatedir, ctx.variables, disk=True
    )
    with dracut.modules_beside(ctx.tree, kernels, ctx.work / "initramfs", inputs) as pending:
        plan = pending.result()
    pipeline.initramfs(ctx, plan)
    for kver, path in ctx.initramfs.items():
        dest = ctx.tree / "boot" / f"initramfs-{kver}.img"
        shutil.copyfile(path, dest)
        os.chmod(dest, 0o600)  # as dracut and kernel-install leave it


@contextlib.contextmanager
def split_tree(tree: Path, layout: DiskLayout, parts: Path) -> Iterator[dict[str, Path]]:
    """{mount point: the directory its filesystem is made from}: each partition mounted below
    / gets its part of the tree, moved aside (a rename) and an empty mount point left in its
    place; put back afterwards."""
    parts.mkdir(parents=True, exist_ok=True)
    moved: list[tuple[Path, Path]] = []
    sources = {"/": tree}
    try:
        for p in sorted(layout.partitions, key=lambda p: -depth(p.mountpoint)):
            if not p.mountpoint.startswith("/") or p.mountpoint == "/":
                continue
            src, aside = tree / p.mountpoint.lstrip("/"), parts / f"p{p.number}"
            st = os.lstat(src)
            os.rename(src, aside)
            moved.append((src, aside))
            os.mkdir(src)
            os.chown(src, st.st_uid, st.st_gid)
            os.chmod(src, st.st_mode & 0o7777)
            sources[p.mountpoint] = aside
        yield sources
    finally:
        for src, aside in reversed(moved):
            os.rmdir(src)
            os.rename(aside, src)


def _efi_files(src: Path, bootx64: Path) -> list[tuple[Path, str]]:
    files = [(f, f.relative_to(src).as_posix()) for f in sorted(src.rglob("*")) if f.is_file() and not f.is_symlink()]
    return [(bootx64, "EFI/BOOT/BOOTX64.EFI"), *((f, rel) for f, rel in files if rel.upper() != "EFI/BOOT/BOOTX64.EFI")]


def partition_image(
    ctx: pipeline.BuildContext, p: Partition, src: Path | None, ids: DiskIds, fs_label: str, bootx64: Path
) -> Path:
    """The filesystem image of one partition (none for the BIOS boot partition's: GRUB writes it)."""
    cfg, img = ctx.cfg, ctx.work / f"part{p.number}.img"
    if p.role == "swap":
        create_sparse(img, p.size)
        os.chmod(img, 0o600)  # as swap wants it
        run(["mkswap", "-U", ids.fs(p), *(["-L", p.label] if p.label else []), os.fspath(img)])
    elif p.role == "efi":
        assert src is not None
        serial = ids.fs(p).replace("-", "").lower()
        make_efiboot(
            _efi_files(src, bootx64), img, label=p.label or "EFI", source_date_epoch=cfg.source_date_epoch,
            size_kib=p.size // 1024, serial=serial,
        )  # fmt: skip
    else:
        assert src is not None
        label = p.label or (fs_label if p.mountpoint == "/" else p.mountpoint.rsplit("/", 1)[-1])
        make_rootfs(
            src, img, RootfsType(p.fstype), free=0, label=label, source_date_epoch=cfg.source_date_epoch,
            seed=f"{config_seed(cfg)}/{p.mountpoint}", image_size=p.size, fs_uuid=ids.fs(p),
        )  # fmt: skip
    return img


def assemble(ctx: pipeline.BuildContext, layout: DiskLayout, ids: DiskIds, dest: Path, fs_label: str) -> DiskLayout:
    """Stage `disk`: the filesystems from the tree, sized (a --grow one to what it holds),
    the GPT, each partition copied in, GRUB's BIOS boot code; returns the final layout."""
    bootx64, core, boot_img = ctx.work / "grub" / "BOOTX64.EFI", ctx.work / "grub" / "core.img", ctx.work / "grub" / "boot.img"
    with split_tree(ctx.tree, layout, ctx.work / "parts") as sources:
        needs = {p.mountpoint: min_image_size(tree_size(sources[p.mountpoint]), RootfsType(p.fstype)) for p in layout.data()}
        layout = fit(layout, needs)
        images = {
            p.number: partition_image(ctx, p, sources.get(p.mountpoint), ids, fs_label, bootx64)
            for p in layout.partitions
            if p.role != "biosboot"
        }
    write_table(dest, layout, ids.disk, {p.number: ids.part(p) for p in layout.partitions})
    for p in layout.partitions:
        if p.number in images:
            put_partition(dest, p, images[p.number])
            images[p.number].unlink()
    biosboot = layout.get("biosboot")
    assert biosboot is not None
    install_bios_boot(dest, boot_img, core, biosboot)
    return layout


def make_disk(
    ctx: pipeline.BuildContext, layout: DiskLayout, out: Path, *, name: str, fs_label: str, kernel_args: tuple[str, ...]
) -> Path:
    """The stages of --make-disk after the kickstart stage; the disk is out/name."""
    if layout.notes:
        info(f"--make-disk: added as reqpart would (the disk boots by BIOS and UEFI): {', '.join(layout.notes)}")
    ids = DiskIds(config_seed(ctx.cfg))
    kernels = setup_tree(ctx, layout, ids, kernel_args)
    pipeline.seal(ctx)
    root = layout.get("/")
    assert root is not None
    initramfs_in_tree(ctx, kernels, root.fstype)
    with stage("grub", ctx.metrics):
        _, cfg_path = _cfg_on_boot(layout, grub_dir(ctx.tree))
        core, boot_img, bootx64 = make_core_images(ctx.tree, ctx.work / "grub", early_config(ids.fs(layout.boot), cfg_path))
        shutil.copyfile(boot_img, ctx.work / "grub" / "boot.img")
    dest = out / name
    with stage("disk", ctx.metrics, usage=True):
        final = assemble(ctx, layout, ids, dest, fs_label)
    ctx.metrics.sizes[name] = dest.stat().st_size
    ctx.metrics.sizes[f"{name} allocated"] = allocated_size(dest)
    table = ", ".join(f"{p.number}: {p.mountpoint} {p.fstype or p.role} {p.size >> 20} MiB" for p in final.partitions)
    info(f"--make-disk: {name}: {final.size >> 20} MiB, {allocated_size(dest) >> 20} MiB allocated; GPT {table}")
    return dest
