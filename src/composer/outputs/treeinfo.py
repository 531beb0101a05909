""".treeinfo and .discinfo of an install tree, written with productmd.

.treeinfo (productmd 1.x format) tells installers and tools where the boot images
are: [images-<arch>] kernel/initrd/boot.iso/efiboot.img, [stage2] mainimage. The
templates may add entries with their `treeinfo SECTION KEY VALUE` command (and
installkernel/installinitrd); those are merged in for the sections productmd knows.
.discinfo is the older three/four line file: timestamp, release, arch, discs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from composer.run import ComposerError, info


def _timestamp(timestamp: int | None) -> int:
    if timestamp is not None:
        return int(timestamp)
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(time.time())


def build_treeinfo(
    *,
    product: str,
    version: str,
    arch: str,
    variant: str = "",
    images: Mapping[str, Mapping[str, str]],
    stage2: str | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
    timestamp: int | None = None,
    checksum_root: Path | None = None,
):
    """A productmd TreeInfo. `images` maps a platform (e.g. "x86_64", "xen") to
    {image type: path relative to the tree}. With checksum_root, every listed image
    gets a sha256 checksum."""
    import productmd.treeinfo as pti  # deferred: only media outputs need productmd

    ti = pti.TreeInfo()
    ti.release.name = product
    ti.release.short = "".join(w for w in product.split()) or product
    ti.release.version = version
    ti.release.is_layered = False
    ti.tree.arch = arch
    ti.tree.build_timestamp = _timestamp(timestamp)

    var = pti.Variant(ti)
    vid = variant or product.replace(" ", "")
    var.id = var.uid = var.name = vid
    var.type = "variant"
    var.paths.packages = "Packages"
    var.paths.repository = "."
    ti.variants.add(var)

    merged: dict[str, dict[str, str]] = {p: dict(v) for p, v in images.items()}
    main_image = stage2
    for section, values in (extra or {}).items():
        if section.startswith("images-"):
            merged.setdefault(section.removeprefix("images-"), {}).update(values)
        elif section == "stage2":
            main_image = values.get("mainimage", main_image)
        else:
            info(f".treeinfo: template section [{section}] is not a productmd section; not written")
    for platform, entries in merged.items():
        ti.tree.platforms.add(platform)
        for kind, path in entries.items():
            ti.images.images.setdefault(platform, {})[kind] = path
    if main_image:
        ti.stage2.mainimage = main_image
    if checksum_root is not None:
        paths = {p for entries in merged.values() for p in entries.values()}
        if main_image:
            paths.add(main_image)
        for p in sorted(paths):
            if not (checksum_root / p).is_file():
                raise ComposerError(f".treeinfo: {p} is listed but {checksum_root / p} does not exist")
            ti.checksums.add(p, "sha256", root_dir=str(checksum_root))
    return ti


def write_treeinfo(dest: Path, **kwargs) -> None:
    ti = build_treeinfo(**kwargs)
    try:
        ti.validate()
    except Exception as e:  # productmd raises plain TypeError/ValueError
        raise ComposerError(f".treeinfo is not valid: {e}") from None
    ti.dump(str(dest))


def write_lorax_treeinfo(
    dest: Path,
    *,
    product: str,
    version: str,
    variant: str,
    basearch: str,
    sections: Mapping[str, Mapping[str, str]],
    timestamp: int | None = None,
) -> None:
    """lorax's .treeinfo (pylorax.treeinfo): [general] with timestamp, family, version,
    name PRODUCT-VERSION, variant, arch and an empty packagedir, then the sections the arch
    template recorded (`treeinfo` commands), in their order; no checksums (lorax writes
    none, and implantisomd5 changes boot.iso afterwards). productmd reads it as Pungi does."""
    import configparser

    c = configparser.ConfigParser(interpolation=None)
    c["general"] = {
        "timestamp": str(timestamp) if timestamp is not None else str(time.time()),
        "family": product,
        "version": version,
        "name": f"{product}-{version}",
        "variant": variant or "",
        "arch": basearch,
        "packagedir": "",
    }
    for section, data in sections.items():
        if not c.has_section(section):
            c.add_section(section)
        for key, value in data.items():
            c.set(section, key, value)
    with open(dest, "w") as f:
        c.write(f)


def write_lorax_discinfo(dest: Path, *, release: str, basearch: str, timestamp: int | None = None) -> None:
    """lorax's .discinfo (pylorax.discinfo): the build time (%f), lorax's --release and the
    base architecture, one a line; no disc numbers line."""
    when = float(timestamp) if timestamp is not None else time.time()
    dest.write_text(f"{when:f}\n{release}\n{basearch}\n")


def write_discinfo(dest: Path, *, release: str, arch: str, timestamp: int | None = None) -> None:
    import productmd.discinfo as pdi  # deferred: only media outputs need productmd

    di = pdi.DiscInfo()
    di.timestamp = float(_timestamp(timestamp))
    di.description = release
    di.arch = arch
    di.disc_numbers = ["ALL"]
    di.dump(str(dest))
