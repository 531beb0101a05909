"""lorax's variable model: product, arch, kernels, branding and the rest, as lorax's templates expect them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from composer.templates.errors import PathEscapeError
from composer.templates.paths import resolve_in_tree


@dataclass(frozen=True)
class Product:
    """lorax's `product`: formats as its name, so `${product}` still gives the name."""

    name: str
    version: str
    release: str = ""
    variant: str = ""
    bugurl: str = ""
    isfinal: bool = False

    def __str__(self) -> str:
        return self.name


# lorax's ArchData: the BCJ filter of mksquashfs per base architecture.
_BCJ = {"x86_64": "x86", "ppc64le": "powerpc"}


_BASEARCH = {
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
    "athlon": "i386",
    "amd64": "x86_64",
    "armv7hl": "arm",
    "armv7l": "arm",
    "armhfp": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Arch:
    """lorax's `arch`: .buildarch (the --buildarch), .basearch, .libdir, .bcj; formats as buildarch."""

    buildarch: str
    basearch: str
    libdir: str = "lib64"
    bcj: str | None = None

    @classmethod
    def of(cls, buildarch: str) -> Arch:
        base = _BASEARCH.get(buildarch, buildarch)
        return cls(buildarch=buildarch, basearch=base, bcj=_BCJ.get(base))

    def __str__(self) -> str:
        return self.buildarch


@dataclass(frozen=True)
class BootImage:
    path: str


@dataclass(frozen=True)
class Kernel:
    """lorax's kernel: .path (in the tree, "boot/vmlinuz-VER"), .version, .arch, .flavor,
    and .initrd/.upgrade/... (.path) for the images next to it. Formats as its version."""

    path: str
    version: str
    arch: str | None = None
    flavor: str | None = None
    images: Mapping[str, BootImage] = field(default_factory=dict)

    def __getattr__(self, name: str) -> BootImage:
        images = self.__dict__.get("images", {})
        if name in images:
            return images[name]
        raise AttributeError(f"kernel {self.__dict__.get('version')} has no {name}")

    def __str__(self) -> str:
        return self.version


@dataclass(frozen=True)
class Branding:
    """lorax's `branding`: the system-release and logos packages (None with --skip-branding)."""

    release: str | None = None
    logos: str | None = None


_KERNEL_FLAVORS = ("debug", "PAE", "PAEdebug", "smp", "xen", "lpae", "64k")


_KERNEL_NAME = re.compile(rf"vmlinuz-(?P<version>.+?[.-](?P<arch>[a-z0-9_]+)(\.(?P<flavor>{'|'.join(_KERNEL_FLAVORS)}))?)$")


def find_boot_kernels(tree: Path, kdir: str = "boot") -> list[Kernel]:
    """The kernels in tree/kdir named as lorax finds them (vmlinuz-VERSION with an arch
    suffix), each with the images "<type>-VERSION.img" beside it (initramfs counts as initrd)."""
    try:
        d = resolve_in_tree(tree, kdir)
        names = sorted(os.listdir(d))
    except (OSError, PathEscapeError):
        return []
    found = []
    for name in names:
        m = _KERNEL_NAME.match(name)
        if not m:
            continue
        version = m.group("version")
        images = {}
        for other in names:
            if other.endswith(f"-{version}.img"):
                kind = other.split("-", 1)[0]
                images["initrd" if kind == "initramfs" else kind] = BootImage(f"{kdir}/{other}")
        found.append(Kernel(f"{kdir}/{name}", version, m.group("arch"), m.group("flavor"), images))
    return found


def udev_escape(label: str) -> str:
    """A volume label as udev names it in /dev/disk/by-label: bytes outside
    [A-Za-z0-9#+.:=@_-] become \\xNN (lorax's `udev` filter)."""
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#+.:=@_-")
    return "".join(c if c in ok else f"\\x{ord(c):02x}" for c in label)


def lorax_lower(text: str) -> str:
    return text.lower()


def lorax_variables(
    product: Product,
    arch: Arch,
    *,
    branding: Branding | None = None,
    isolabel: str | None = None,
    runtime_img: str = "images/install.img",
    domacboot: bool = True,
    doupgrade: bool = True,
    workdir: str = "/var/tmp",
    extra_boot_args: str = "",
) -> dict[str, object]:
    """The variables lorax gives its runtime and arch templates (those that do not
    depend on the tree; TemplateRunner adds root, inroot, outroot, kernels, glob,
    exists), plus composer's own names (version, release, variant, bugurl, isfinal)."""
    return {
        "product": product,
        "arch": arch,
        "basearch": arch.basearch,
        "libdir": arch.libdir,
        "branding": branding or Branding(),
        "runtime_img": runtime_img,
        "runtime_base": os.path.basename(runtime_img),
        "isolabel": isolabel if isolabel is not None else f"{product.name}-{product.version}-{arch.basearch}",
        "udev": udev_escape,
        "lower": lorax_lower,
        "domacboot": domacboot,
        "doupgrade": doupgrade,
        "workdir": workdir,
        "extra_boot_args": extra_boot_args,
        # where lorax copies config_files/ for runtime-postinstall.tmpl (TemplateRunner.stage_config_files)
        "configdir": "tmp/config_files",
        # composer's names (its templates before the lorax model; kept as extensions)
        "version": product.version,
        "release": product.release,
        "variant": product.variant,
        "bugurl": product.bugurl,
        "isfinal": product.isfinal,
    }


def sample_variables(basearch: str = "x86_64") -> dict[str, object]:
    """Plausible variables for checking templates without a build (template-check)."""
    buildarch = {"i386": "i686", "arm": "armv7hl"}.get(basearch, basearch)
    product = Product("Fedora", "41", "41", "", "https://bugzilla.redhat.com", False)
    variables = lorax_variables(
        product, Arch.of(buildarch), branding=Branding("fedora-release", "fedora-logos"), isolabel="Fedora-41-" + basearch
    )
    variables["rootfs_type"] = "btrfs"
    variables["configdir"] = "tmp/config_files"  # lorax gives it to runtime-postinstall.tmpl
    return variables
