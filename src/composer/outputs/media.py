"""What boot.iso and the netboot tree share: boot config rendering and kernel staging.

Boot configuration text (GRUB menus, isolinux.cfg, pxelinux.cfg, iPXE scripts) lives
in the product's template directory as Mako files; this module only gives them
variables: the build's template variables plus

* ``kernels``: one entry per kernel, newest first, each with ``version``, ``kernel``
  and ``initrd`` (paths relative to the media root, e.g. "images/pxeboot/vmlinuz"),
  and ``index``;
* ``extra_args``: kernel arguments from the command line / kickstart (a string);
* whatever the caller adds (``volid`` for media, ``url`` and ``split`` for netboot).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from composer.preflight import check_kernel_arg
from composer.run import ComposerError
from composer.templates import render_template


@dataclasses.dataclass(frozen=True)
class BootKernel:
    index: int
    version: str
    kernel: str  # path relative to the media root
    initrd: str

    @property
    def suffix(self) -> str:
        return name_suffix(self.index, self.version)


def name_suffix(index: int, version: str) -> str:
    """The newest kernel (index 0) gets the plain names (vmlinuz, initrd.img) boot configs
    expect; the others vmlinuz-KVER / initrd-KVER.img."""
    return "" if index == 0 else f"-{version}"


def boot_kernels(versions: Sequence[str], directory: str = "images/pxeboot") -> list[BootKernel]:
    """Every kernel's names in the output, newest first (name_suffix)."""
    return [
        BootKernel(i, v, f"{directory}/vmlinuz{name_suffix(i, v)}", f"{directory}/initrd{name_suffix(i, v)}.img")
        for i, v in enumerate(versions)
    ]


def render_config(templatedir: Path, name: str, variables: Mapping[str, object]) -> str:
    """Render the Mako file templatedir/name (a boot config, not a command template)."""
    path = name if isinstance(name, Path) else templatedir / name
    if not path.is_file():
        raise ComposerError(f"template set {templatedir.name} has no {path.name} ({path})")
    text, _ = render_template(path, [templatedir, path.parent], dict(variables))
    # Empty variables leave runs of blanks inside lines (not in the indentation): tidy them.
    lines = [re.sub(r"(?<=\S) {2,}", " ", line.rstrip()) for line in text.strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def join_args(*parts: str | Sequence[str]) -> str:
    """``extra_args`` for the menus: every word checked as a kernel argument (as the
    command line's were, and as mkksiso's are), so that no caller can put menu syntax
    into a GRUB, isolinux, pxelinux or iPXE line."""
    words: list[str] = []
    for p in parts:
        if isinstance(p, str):
            words += shlex.split(p)
        else:
            words += list(p)
    return " ".join(check_kernel_arg("kernel argument", w) for w in words)


def copy_file(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest
