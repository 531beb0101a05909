"""template-check --sharedir: render and parse a whole lorax template set without a build.

A lorax template set (lorax's --sharedir, e.g. /usr/share/lorax/templates.d/99-generic)
holds three kinds of Mako files:

* runtime templates (runtime-install/-postinstall/-cleanup.tmpl), run on the runtime
  tree with lorax's runtime variables (product with its name in lower case, arch, root,
  basearch, libdir, branding; configdir for postinstall);
* arch templates (x86.tmpl, aarch64.tmpl, ppc64le.tmpl, s390.tmpl; live/*.tmpl of
  livemedia-creator), run with the runtime tree as input root and the media tree as
  output root, with lorax's arch variables (kernels, runtime_img, inroot, outroot,
  isolabel, udev, ...); each is checked for the architecture it is written for;
* files other templates include (efi.tmpl): checked through their includer, with a
  sample tree in which the include happens (the EFI boot loaders exist);
* output templates that are not command lists (appliance/libvirt.tmpl,
  pxe-live/pxe-config.tmpl): rendered only.

Every command line is parsed and its arguments checked as a build would (nothing
runs); every error is reported as `file:line: message`, not only the first.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from composer.run import ComposerError
from composer.templates import (
    Arch,
    Product,
    TemplateError,
    TemplateRunner,
    render_template,
    sample_variables,
)

__all__ = ["CheckResult", "check_sharedir"]

RUNTIME_TEMPLATES = ("runtime-install.tmpl", "runtime-postinstall.tmpl", "runtime-cleanup.tmpl")
# lorax's arch template for each base architecture (and livemedia-creator's in live/)
ARCH_TEMPLATES = {"x86.tmpl": "x86_64", "aarch64.tmpl": "aarch64", "ppc64le.tmpl": "ppc64le", "s390.tmpl": "s390x"}
# livemedia-creator's install list: installpkg lines only, with basearch
PACKAGE_LIST_TEMPLATES = ("live-install.tmpl",)
# Mako files that make a document, not commands
OUTPUT_TEMPLATES = {"libvirt.tmpl", "pxe-config.tmpl"}
_INCLUDE = re.compile(r"""<%include\s+file\s*=\s*["']([^"']+)["']""")

# Kernel file names lorax's findkernels() accepts, per base architecture.
_SAMPLE_KERNEL = {
    "x86_64": "6.11.4-301.fc41.x86_64",
    "aarch64": "6.11.4-301.fc41.aarch64",
    "ppc64le": "6.11.4-301.fc41.ppc64le",
    "s390x": "6.11.4-301.fc41.s390x",
}


@dataclass
class CheckResult:
    checked: list[str] = dataclasses.field(default_factory=list)  # "file: how"
    errors: list[str] = dataclasses.field(default_factory=list)  # "file:line: message"


def _sample_inroot(root: Path, basearch: str) -> None:
    """A runtime tree with what lorax's arch templates look for when rendered."""
    kver = _SAMPLE_KERNEL.get(basearch, f"6.11.4-301.fc41.{basearch}")
    files = [
        "images/install.img",
        f"boot/vmlinuz-{kver}",
        f"boot/initramfs-{kver}.img",
        "usr/share/grub/unicode.pf2",
        "usr/lib/grub/i386-pc/boot_hybrid.img",
        "usr/share/licenses/fedora-release-common/LICENSE",
        "usr/share/lorax/product/.buildstamp",
        "usr/share/lorax/updates/README",
    ]
    for efi in (
        "shimx64.efi",
        "mmx64.efi",
        "gcdx64.efi",
        "shimia32.efi",
        "mmia32.efi",
        "gcdia32.efi",
        "shimaa64.efi",
        "mmaa64.efi",
        "gcdaa64.efi",
    ):
        files.append(f"boot/efi/EFI/fedora/{efi}")
    for f in files:
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def _includes(path: Path) -> list[str]:
    try:
        return _INCLUDE.findall(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def check_sharedir(sharedir: Path, *, extra: Mapping[str, object] | None = None) -> CheckResult:
    """Check every *.tmpl below sharedir as lorax (or livemedia-creator) would run it."""
    if not sharedir.is_dir():
        raise ComposerError(f"--sharedir {sharedir}: no such directory")
    templates = sorted(p for p in sharedir.rglob("*.tmpl") if p.is_file())
    if not templates:
        raise ComposerError(f"--sharedir {sharedir}: no *.tmpl files there")
    result = CheckResult()
    included: dict[Path, Path] = {}
    for t in templates:
        for name in _includes(t):
            target = (t.parent / name) if not name.startswith("/") else Path(name)
            included.setdefault(target.resolve(), t)

    with tempfile.TemporaryDirectory(prefix="composer-template-check.") as tmp:
        work = Path(tmp)
        for t in templates:
            rel = t.relative_to(sharedir).as_posix()
            if t.resolve() in included:
                result.checked.append(f"{rel}: through {included[t.resolve()].relative_to(sharedir).as_posix()}")
                continue
            basearch = ARCH_TEMPLATES.get(t.name, "x86_64")
            variables = sample_variables(basearch)
            variables.update(extra or {})
            if t.name in OUTPUT_TEMPLATES:
                how = "rendered (an output document, not commands)"
                try:
                    render_template(t, [t.parent, sharedir], {**_output_sample(), **(extra or {})})
                except TemplateError as e:
                    result.errors.append(str(e))
                result.checked.append(f"{rel}: {how}")
                continue
            case = work / re.sub(r"\W", "_", rel)
            inroot, outroot = case / "inroot", case / "outroot"
            _sample_inroot(inroot, basearch)
            outroot.mkdir(parents=True)
            if t.name in RUNTIME_TEMPLATES or t.name in PACKAGE_LIST_TEMPLATES:
                how = "runtime template"
                product = cast(Product, variables["product"])  # sample_variables() puts a Product there
                variables["product"] = dataclasses.replace(product, name=product.name.lower())  # as lorax
                runner = TemplateRunner(tree=inroot, templatedir=t.parent, variables=variables, dry_run=True)
            else:
                how = f"arch template ({basearch})"
                variables["arch"] = Arch.of(basearch)
                variables["basearch"] = basearch
                variables["workdir"] = str(case)
                runner = TemplateRunner(tree=outroot, inroot=inroot, templatedir=t.parent, variables=variables, dry_run=True)
            errors: list[TemplateError] = []
            runner.collect_errors = errors
            try:
                runner.run(t)
            except TemplateError as e:
                errors.append(e)
            result.errors += [str(e) for e in errors if str(e) not in result.errors]  # an include: once
            result.checked.append(f"{rel}: {how}")
    return result


def _output_sample() -> dict[str, object]:
    """Plausible values for livemedia-creator's output templates (libvirt.tmpl, pxe-config.tmpl)."""
    return {
        "name": "Fedora-41",
        "arch": "x86_64",
        "memory": 2048,
        "vcpus": 2,
        "networks": [],
        "disks": [],
        "title": "Fedora 41",
        "project": "Fedora",
        "releasever": "41",
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "liveimg": "squashfs.img",
        "addargs": "",
    }
