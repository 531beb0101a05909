"""GRUB boot images and efiboot.img (a FAT image), made without loop devices or mounts.

GRUB comes from the install tree when the tree has it (its modules, run with the
tree's own grub2-mkimage/grub-mkimage inside the tree), else from the build host
(Debian's grub-pc-bin / grub-efi-amd64-bin in /usr/lib/grub/<platform>). The log
says which. A tree with a signed shim + grub (Fedora's /boot/efi/EFI/<vendor>/)
gives those prebuilt binaries instead, so Secure Boot keeps working.

efiboot.img is made by `mkfs.fat -C` on a sparse file and filled with mtools'
`mmd`/`mcopy`, which write into the image file directly.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from composer.reproducible import fat_serial
from composer.run import ComposerError, debug, in_tree_argv, info, run

GRUB_MODDIRS = ("usr/lib/grub/{platform}", "usr/lib/grub2/{platform}")
GRUB_MKIMAGE = ("grub2-mkimage", "grub-mkimage")

# What the boot menus need. Modules missing from a GRUB build are skipped.
COMMON_MODULES = (
    "iso9660",
    "part_msdos",
    "part_gpt",
    "fat",
    "normal",
    "linux",
    "search",
    "search_label",
    "search_fs_file",
    "search_fs_uuid",
    "configfile",
    "echo",
    "test",
    "ls",
    "cat",
    "serial",
    "terminal",
    "halt",
    "reboot",
    "sleep",
    "gzio",
    "xzio",
    "boot",
    "chain",
    "minicmd",
    "loadenv",
    "regexp",
    "font",
    "gfxterm",
    "all_video",
    "true",
)
PLATFORM_MODULES = {
    "i386-pc": ("biosdisk",),
    "x86_64-efi": ("efi_gop", "efi_uga", "efinet", "tftp", "http", "net"),
}
EFI_ARCH_NAMES = {"x86_64": ("x64", "X64"), "aarch64": ("aa64", "AA64")}


@dataclasses.dataclass(frozen=True)
class GrubSource:
    platform: str  # "i386-pc", "x86_64-efi"
    moddir: Path  # host path of the module directory
    origin: str  # "install tree" or "host"
    tree: Path | None  # set when mkimage runs inside the tree
    mkimage: str  # program name (in the tree or on the host)

    def modules(self, wanted: Sequence[str]) -> list[str]:
        present = [m for m in wanted if (self.moddir / f"{m}.mod").is_file()]
        missing = sorted(set(wanted) - set(present))
        if missing:
            debug(f"grub {self.platform}: modules not in {self.moddir}: {' '.join(missing)}")
        return present


def _tree_program(tree: Path, names: Sequence[str]) -> str | None:
    for name in names:
        for d in ("usr/bin", "usr/sbin", "bin", "sbin"):
            if (tree / d / name).exists():
                return name
    return None


def find_grub(tree: Path | None, platform: str) -> GrubSource:
    """GRUB for `platform` from the install tree if it has it, else from the host."""
    if tree is not None:
        mk = _tree_program(tree, GRUB_MKIMAGE)
        for pattern in GRUB_MODDIRS:
            d = tree / pattern.format(platform=platform)
            if (d / "kernel.img").is_file() and mk:
                info(f"grub {platform}: from the install tree ({d.relative_to(tree)}, {mk})")
                return GrubSource(platform, d, "install tree", tree, mk)
    for pattern in GRUB_MODDIRS:
        d = Path("/") / pattern.format(platform=platform)
        if (d / "kernel.img").is_file():
            mk = next((m for m in GRUB_MKIMAGE if shutil.which(m)), None)
            if mk is None:
                raise ComposerError(f"grub {platform}: {d} exists but no grub-mkimage on this host")
            info(f"grub {platform}: the install tree has none; using the HOST's ({d}, {mk})")
            return GrubSource(platform, d, "host", None, mk)
    pkg = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}.get(platform, f"grub for {platform}")
    raise ComposerError(f"no GRUB for {platform} in the install tree or on this host (install {pkg})")


def grub_mkimage(
    src: GrubSource,
    fmt: str,
    prefix: str,
    output: Path,
    *,
    modules: Sequence[str] | None = None,
    config: Path | None = None,
) -> Path:
    """Build a GRUB core image (fmt e.g. "i386-pc-eltorito", "x86_64-efi") at output."""
    mods = src.modules(modules if modules is not None else COMMON_MODULES + PLATFORM_MODULES.get(src.platform, ()))
    output.parent.mkdir(parents=True, exist_ok=True)
    if src.tree is not None:
        rel = "/" + src.moddir.relative_to(src.tree).as_posix()
        argv = [src.mkimage, "-d", rel, "-O", fmt, "-p", prefix, "-o", f"/tmp/out/{output.name}"]
        binds = [(output.parent.resolve(), "/tmp/out")]
        ro = []
        if config is not None:
            ro.append((config.resolve(), "/tmp/embed.cfg"))
            argv += ["-c", "/tmp/embed.cfg"]
        run(in_tree_argv(src.tree, argv + mods, binds=binds, ro_binds=ro))
    else:
        argv = [src.mkimage, "-d", os.fspath(src.moddir), "-O", fmt, "-p", prefix, "-o", os.fspath(output)]
        if config is not None:
            argv += ["-c", os.fspath(config)]
        run(argv + mods)
    if not output.is_file():
        raise ComposerError(f"{src.mkimage} did not write {output}")
    return output


def find_shim(tree: Path, arch: str) -> dict[str, Path] | None:
    """Prebuilt (signed) shim + grub in the tree: {name in EFI/BOOT: host path}, or None."""
    low, up = EFI_ARCH_NAMES.get(arch, (None, None))
    if low is None:
        return None
    for vendor_dir in sorted((tree / "boot/efi/EFI").glob("*")) if (tree / "boot/efi/EFI").is_dir() else []:
        if vendor_dir.name == "BOOT":
            continue
        shim = vendor_dir / f"shim{low}.efi"
        grub = vendor_dir / f"grub{low}.efi"
        if shim.is_file() and grub.is_file():
            files = {f"BOOT{up}.EFI": shim, f"grub{low}.efi": grub}
            mm = vendor_dir / f"mm{low}.efi"
            if mm.is_file():
                files[f"mm{low}.efi"] = mm
            info(f"efi: shim + grub from the install tree ({vendor_dir.relative_to(tree)})")
            return files
    return None


def fat_size_kib(files: Sequence[Path]) -> int:
    """Room for files in a FAT image: contents in 4 KiB clusters, plus FAT and slack."""
    data = sum(-(-f.stat().st_size // 4096) * 4 for f in files)
    size = data + data // 8 + 512
    return -(-size // 1024) * 1024  # whole MiB


def mkfs_fat_argv(dest: Path, size_kib: int, label: str, *, serial: str | None = None) -> list[str]:
    argv = ["mkfs.fat", "-C", "-n", label[:11].upper()]
    if serial is not None:
        # dosfstools 4.2 ignores SOURCE_DATE_EPOCH: --invariant fixes its times (and a
        # serial, which the -i after it replaces with ours; the order matters).
        argv += ["--invariant", "-i", serial]
    return argv + [os.fspath(dest), str(size_kib)]


def mtools_env(source_date_epoch: int | None) -> dict[str, str]:
    env = {"MTOOLS_SKIP_CHECK": "1"}
    if source_date_epoch is not None:
        # mtools dates the directories mmd makes (and "." and "..") from it.
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    return env


def make_efiboot(
    files: Sequence[tuple[Path, str]],
    dest: Path,
    *,
    label: str = "EFIBOOT",
    source_date_epoch: int | None = None,
    seed: str = "",
    size_kib: int | None = None,
    serial: str | None = None,
) -> Path:
    """A FAT image holding files: (host path, path in the image, e.g. "EFI/BOOT/BOOTX64.EFI").

    size_kib: the image's size (a disk's EFI system partition), else just room for the
    files; serial: the volume serial (8 hex digits), else derived from `seed` when reproducible.

    With source_date_epoch the image is reproducible: fixed mkfs times, a volume serial
    derived from `seed`, directory and file dates at the epoch (or the files' own older
    mtimes), entries added in the order given.
    """
    if not files:
        raise ComposerError("efiboot.img: no files to put in it")
    for src, _ in files:
        if not src.is_file():
            raise ComposerError(f"efiboot.img: {src} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    size = fat_size_kib([s for s, _ in files])
    if size_kib is not None:
        if size > size_kib:
            raise ComposerError(f"{dest.name}: {size_kib // 1024} MiB is too small for its files (about {size // 1024} MiB)")
        size = size_kib
    if serial is None and source_date_epoch is not None:
        serial = fat_serial(seed)
    run(mkfs_fat_argv(dest, size, label, serial=serial))
    env = mtools_env(source_date_epoch)
    dirs = sorted({str(Path(p).parent) for _, p in files} - {"."}, key=lambda d: d.count("/"))
    made: set[str] = set()
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in made:
                run(["mmd", "-i", os.fspath(dest), f"::/{sub}"], env=env)
                made.add(sub)
    for src, p in files:
        copy = ["mcopy", "-i", os.fspath(dest)]
        if source_date_epoch is not None:
            # -m keeps the file's own mtime (clamped to the epoch here) instead of "now".
            copy += ["-m"]
            if os.lstat(src).st_mtime > source_date_epoch:
                os.utime(src, (source_date_epoch, source_date_epoch))
        run([*copy, os.fspath(src), f"::/{p}"], env=env)
    info(f"efiboot.img: {size // 1024} MiB FAT, {len(files)} files")
    return dest
