"""`composer boot-iso`: installer/runtime media — boot.iso (BIOS + UEFI, hybrid) and its tree.

The runtime is built as for `composer runtime`; the media use it split: the small
dracut initramfs boots and finds images/install.img (the squashfs) on the medium by
its volume label. OUTDIR gets:

    images/boot.iso  images/install.img  images/efiboot.img  images/eltorito.img
    images/pxeboot/vmlinuz  images/pxeboot/initrd.img  (small initrd; -KVER for more kernels)
    boot/grub2/grub.cfg  EFI/BOOT/{BOOTX64.EFI,grub.cfg}  .treeinfo  .discinfo

boot.iso holds the same tree. The menus come from the product's templates:
grub2-bios.cfg, grub2-efi.cfg (GRUB) or isolinux.cfg (--bios-loader isolinux); an
optional bootiso-<basearch>.tmpl command template and --add-arch-template files run
on the media tree (not the runtime tree) before the images are made.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from composer.config import Config
from composer.images.efiboot import (
    EFI_ARCH_NAMES,
    find_grub,
    find_shim,
    grub_mkimage,
    make_efiboot,
)
from composer.images.iso import BiosBoot, check_volid, make_iso
from composer.images.sparse import copy_sparse
from composer.outputs import ram
from composer.outputs.media import (
    BootKernel,
    boot_kernels,
    copy_file,
    join_args,
    render_config,
)
from composer.outputs.treeinfo import write_discinfo, write_treeinfo
from composer.pipelines.runtime import Runtime, build_runtime, compose_dirs, log_summary
from composer.product import template_dir, template_variables
from composer.reproducible import config_seed
from composer.run import LOCK_MARKER, ComposerError, info, stage
from composer.templates import TemplateRunner

BIOS_LOADERS = ("grub2", "isolinux")
GRUB_BIOS_PREFIX = "/boot/grub2"
ISOLINUX_DIRS = ("usr/share/syslinux", "usr/lib/ISOLINUX", "usr/lib/syslinux/modules/bios")
INSTALL_IMAGE = "images/install.img"  # the installer runtime's place on boot.iso


@dataclasses.dataclass(frozen=True)
class MediaOptions:
    volid: str
    bios_loader: str = "grub2"
    kernel_args: tuple[str, ...] = ()
    arch_templates: tuple[Path, ...] = ()
    arch_template_vars: tuple[tuple[str, str], ...] = ()
    # Where the squashfs image goes on the medium: boot-iso's installer runtime, or a live
    # system's (composer livemedia: LiveOS/squashfs.img); the menus get its dir and name.
    stage2: str = INSTALL_IMAGE


def media_variables(cfg: Config, opts: MediaOptions, kernels: list[BootKernel]) -> dict[str, object]:
    variables = template_variables(cfg)
    variables.update(dict(opts.arch_template_vars))
    variables.update(
        {
            "volid": opts.volid,
            "kernels": kernels,
            "extra_args": join_args(opts.kernel_args),
            "bios_loader": opts.bios_loader,
            "ram_mb": 0,  # the RAM budget (outputs/ram.py), known once the initrds are in place
            "ram_stop_mb": 0,  # the least RAM it boots in, known then too
            "overlay_args": " ".join(cfg.rootfs_type.live_args),
            "live_dir": opts.stage2.rpartition("/")[0],
            "live_image": opts.stage2.rpartition("/")[2],
            # A live system's medium, not an installer's: a template set with one menu for
            # both (the test product's) needs nothing else; Fedora's has a live menu of its own.
            "live_media": opts.stage2 != INSTALL_IMAGE,
        }
    )
    return variables


def config_names(bios_loader: str) -> dict[str, str]:
    """Template file -> place in the media tree."""
    names = {"grub2-efi.cfg": "EFI/BOOT/grub.cfg"}
    if bios_loader == "grub2":
        names["grub2-bios.cfg"] = f"{GRUB_BIOS_PREFIX.lstrip('/')}/grub.cfg"
    else:
        names["isolinux.cfg"] = "isolinux/isolinux.cfg"
    return names


def check_boot_menus(cfg: Config, opts: MediaOptions) -> None:
    """Render the boot configs with a sample kernel before the long build: a template
    error stops the build in a second, not after the runtime compose."""
    templatedir = template_dir(cfg)
    variables = media_variables(cfg, opts, boot_kernels(["0.0.0-sample"]))
    for name in config_names(opts.bios_loader):
        render_config(templatedir, name, variables)
    for t in opts.arch_templates:
        if not t.is_file():
            raise ComposerError(f"--add-arch-template {t}: no such file")
    checker = TemplateRunner(tree=Path("/nonexistent-media-tree"), templatedir=templatedir, variables=variables, dry_run=True)
    for t in arch_templates(cfg, variables, opts):
        checker.run(t)


def arch_templates(cfg: Config, variables: dict[str, object], opts: MediaOptions) -> list[Path]:
    """The product's bootiso-<basearch>.tmpl (if any), then --add-arch-template files."""
    own = template_dir(cfg) / f"bootiso-{variables['basearch']}.tmpl"
    return ([own] if own.is_file() else []) + [t.resolve() for t in opts.arch_templates]


def _find_isolinux(tree: Path) -> tuple[Path, Path | None]:
    """(directory with isolinux.bin + ldlinux.c32, isohdpfx.bin or None): tree first, then host."""
    for root, origin in ((tree, "install tree"), (Path("/"), "HOST")):
        bins = [root / d / "isolinux.bin" for d in ISOLINUX_DIRS]
        ldl = [root / d / "ldlinux.c32" for d in ISOLINUX_DIRS]
        found_bin = next((b for b in bins if b.is_file()), None)
        found_ldl = next((b for b in ldl if b.is_file()), None)
        if found_bin and found_ldl:
            mbr = next((root / d / "isohdpfx.bin" for d in ISOLINUX_DIRS if (root / d / "isohdpfx.bin").is_file()), None)
            info(f"isolinux: from the {origin} ({found_bin.parent})")
            return found_bin, mbr
    raise ComposerError("no isolinux.bin + ldlinux.c32 in the install tree or on this host (install isolinux syslinux-common)")


def _ldlinux(isolinux_bin: Path) -> Path:
    for d in (isolinux_bin.parent, *(Path("/") / x for x in ISOLINUX_DIRS)):
        if (d / "ldlinux.c32").is_file():
            return d / "ldlinux.c32"
    raise ComposerError("ldlinux.c32 not found next to isolinux.bin")


@dataclasses.dataclass(frozen=True)
class MediaTree:
    """What media_tree laid out, for boot_iso."""

    kernels: list[BootKernel]
    bios: BiosBoot
    treeinfo: dict[str, dict[str, str]]  # what the arch templates recorded for .treeinfo
    budgets: dict[str, ram.RamBudget]  # per kernel


def make_media(cfg: Config, opts: MediaOptions, rt: Runtime, out: Path, work: Path) -> dict[str, ram.RamBudget]:
    """Lay out the media tree in `out` from a built runtime `rt`, then make boot.iso; their
    times and sizes go into rt.metrics. Returns the RAM budget per kernel."""
    media = media_tree(cfg, opts, rt, out)
    boot_iso(cfg, opts, rt, media, out, work)
    return media.budgets


def media_tree(cfg: Config, opts: MediaOptions, rt: Runtime, out: Path) -> MediaTree:
    """Stage `media tree`: kernels and small initrds, install.img, the boot menus, the BIOS
    and UEFI boot files, the arch templates, then efiboot.img."""
    templatedir = template_dir(cfg)
    kernels = boot_kernels([k.version for k in rt.kernels])
    variables = media_variables(cfg, opts, kernels)
    with stage("media tree", rt.metrics, key="media_tree"):
        budgets: dict[str, ram.RamBudget] = {}
        for bk, k in zip(kernels, rt.kernels, strict=True):
            copy_file(k.vmlinuz, out / bk.kernel)
            # The small initrd carries its RAM budget: below it, it says the boot will be slow;
            # below its stop, it stops with one line.
            budgets[k.version] = ram.predict("media", k.vmlinuz, rt.initramfs[k.version], unpacked=rt.initramfs_ram[k.version])
            ram.with_memory_check(rt.initramfs[k.version], out / bk.initrd, budgets[k.version], mtime=cfg.source_date_epoch or 0)
        variables["ram_mb"] = budgets[rt.kernels[0].version].floor_mb
        variables["ram_stop_mb"] = budgets[rt.kernels[0].version].stop_mb
        (out / opts.stage2).parent.mkdir(parents=True, exist_ok=True)
        copy_sparse(rt.squashfs, out / opts.stage2)
        for name, dest in config_names(opts.bios_loader).items():
            target = out / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render_config(templatedir, name, variables))
        bios = _bios_boot(opts, rt.tree, out)
        efidir = _uefi_boot(cfg, rt.tree, out)
        # Product/arch templates on the media tree (e.g. extra files for the ISO).
        runner = TemplateRunner(tree=out, inroot=rt.tree, templatedir=templatedir, variables=variables)
        for t in arch_templates(cfg, variables, opts):
            runner.run(t)
        efi_files = sorted(p for p in efidir.rglob("*") if p.is_file())
        make_efiboot(
            [(p, p.relative_to(out).as_posix()) for p in efi_files],
            out / "images" / "efiboot.img",
            source_date_epoch=cfg.source_date_epoch,
            seed=config_seed(cfg),
        )
    return MediaTree(kernels, bios, runner.treeinfo, budgets)


def _bios_boot(opts: MediaOptions, tree: Path, out: Path) -> BiosBoot:
    """The BIOS boot image: GRUB's El Torito image, or isolinux (from the tree or the host)."""
    if opts.bios_loader == "grub2":
        grub = find_grub(tree, "i386-pc")
        grub_mkimage(grub, "i386-pc-eltorito", GRUB_BIOS_PREFIX, out / "images" / "eltorito.img")
        hybrid = grub.moddir / "boot_hybrid.img"
        has_hybrid = hybrid.is_file()
        if not has_hybrid:
            info(f"grub i386-pc: no boot_hybrid.img in {grub.moddir}: boot.iso boots BIOS from CD only")
        return BiosBoot("grub2", "images/eltorito.img", "boot.cat", hybrid if has_hybrid else None)
    isolinux_bin, mbr = _find_isolinux(tree)
    copy_file(isolinux_bin, out / "isolinux" / "isolinux.bin")
    copy_file(_ldlinux(isolinux_bin), out / "isolinux" / "ldlinux.c32")
    return BiosBoot("isolinux", "isolinux/isolinux.bin", "isolinux/boot.cat", mbr)


def _uefi_boot(cfg: Config, tree: Path, out: Path) -> Path:
    """UEFI: EFI/BOOT on the ISO (shim and GRUB, or GRUB alone); returns that directory."""
    efi_names = EFI_ARCH_NAMES.get(cfg.arch)
    if efi_names is None:
        raise ComposerError(f"boot-iso: no UEFI boot for architecture {cfg.arch}")
    efidir = out / "EFI" / "BOOT"
    shim = find_shim(tree, cfg.arch)
    if shim:
        for name, src in shim.items():
            copy_file(src, efidir / name)
    else:
        efi_grub = find_grub(tree, f"{cfg.arch}-efi")
        grub_mkimage(efi_grub, f"{cfg.arch}-efi", "/EFI/BOOT", efidir / f"BOOT{efi_names[1]}.EFI")
        info("efi: no shim in the install tree: GRUB alone (no Secure Boot)")
    return efidir


def boot_iso(cfg: Config, opts: MediaOptions, rt: Runtime, media: MediaTree, out: Path, work: Path) -> None:
    """Stage `boot.iso`: .discinfo, the ISO of the media tree (with a .treeinfo that cannot
    list the ISO itself), then the tree's own .treeinfo."""
    arch, kernels = cfg.arch, media.kernels
    images = {"kernel": kernels[0].kernel, "initrd": kernels[0].initrd, "efiboot.img": "images/efiboot.img"}
    if opts.bios_loader == "grub2":
        images["eltorito.img"] = "images/eltorito.img"  # as lorax's x86.tmpl records it
    # lorax's x86.tmpl lists the same kernel and initrd for Xen guests (Pungi, virt-install read it).
    xen = {"images-xen": {"kernel": kernels[0].kernel, "initrd": kernels[0].initrd}} if arch == "x86_64" else {}
    treeinfo_args = {
        "product": cfg.product,
        "version": cfg.version,
        "arch": arch,
        "variant": cfg.variant,
        "stage2": opts.stage2,
        "extra": {**xen, **rt.treeinfo, **media.treeinfo},
    }
    release = f"{cfg.product} {cfg.version}"
    write_discinfo(out / ".discinfo", release=release, arch=arch, timestamp=cfg.source_date_epoch)
    with stage("boot.iso", rt.metrics, key="iso"):
        # The .treeinfo on the ISO cannot list the ISO itself.
        iso_treeinfo = work / "iso.treeinfo"
        write_treeinfo(iso_treeinfo, images={arch: images}, checksum_root=out, timestamp=cfg.source_date_epoch, **treeinfo_args)
        grafts = [(".treeinfo", iso_treeinfo)]
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out).as_posix()
            # Not the build's lock marker (it holds the process id; it leaves OUTDIR at the end).
            if p.is_file() and rel not in (".treeinfo", LOCK_MARKER) and not rel.startswith("images/boot.iso"):
                grafts.append((rel, p))
        iso = out / "images" / "boot.iso"
        make_iso(
            iso,
            opts.volid,
            grafts,
            bios=media.bios,
            efiboot=out / "images" / "efiboot.img",
            efiboot_in_iso="images/efiboot.img",
            source_date_epoch=cfg.source_date_epoch,
            seed=config_seed(cfg),
        )
    write_treeinfo(
        out / ".treeinfo",
        images={arch: {**images, "boot.iso": "images/boot.iso"}},
        checksum_root=out,
        timestamp=cfg.source_date_epoch,
        **treeinfo_args,
    )
    for rel in ("images/boot.iso", opts.stage2, "images/efiboot.img", kernels[0].initrd):
        rt.metrics.sizes[rel] = (out / rel).stat().st_size


def compose_boot_iso(cfg: Config, opts: MediaOptions) -> Path:
    check_volid(opts.volid)
    check_boot_menus(cfg, opts)
    with compose_dirs(cfg) as (out, work):
        rt = build_runtime(cfg, work)
        budgets = make_media(cfg, opts, rt, out, work)
        log_summary(rt.metrics.sizes, rt.metrics.timings, budgets)
    info(
        f"outputs in {cfg.outdir}: images/boot.iso, images/install.img, images/pxeboot/, "
        "images/efiboot.img, EFI/BOOT/, .treeinfo, .discinfo"
    )
    return cfg.outdir
