"""The frozen configuration of one build, made from the command line."""

from __future__ import annotations

import dataclasses
import enum
import math
import platform
from collections.abc import Sequence
from pathlib import Path

from composer.run import ComposerError
from composer.userns import default_cachedir


class RootfsType(enum.StrEnum):
    BTRFS = "btrfs"
    EXT4 = "ext4"
    EROFS = "erofs"
    SQUASHFS = "squashfs"  # no rootfs.img: the tree goes straight into squashfs.img

    @property
    def dracut_drivers(self) -> tuple[str, ...]:
        """The filesystem driver dmsquash-live needs for LiveOS/rootfs.img; dracut does not
        add it by itself because it looks at the build host, not at the image."""
        return () if self is RootfsType.SQUASHFS else (self.value,)

    @property
    def read_only(self) -> bool:
        """erofs, or the tree straight in squashfs: the runtime's writes need an overlayfs."""
        return self in (RootfsType.EROFS, RootfsType.SQUASHFS)

    @property
    def live_args(self) -> tuple[str, ...]:
        """Kernel arguments dmsquash-live needs for this root: an overlayfs upper dir for a
        read-only one; a btrfs/ext4 rootfs.img gets dracut's default dm-snapshot."""
        return ("rd.live.overlay.overlayfs=1",) if self.read_only else ()


class DnfChoice(enum.StrEnum):
    AUTO = "auto"  # the host's (or --dnf-root's) `dnf`, whichever major version that is
    DNF4 = "dnf4"
    DNF5 = "dnf5"


class Compression(enum.StrEnum):
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"


# /var/cache/composer for root, ~/.cache/composer (XDG_CACHE_HOME) for an ordinary user.
DEFAULT_CACHEDIR = default_cachedir()


# Per repository URL (a --source base URL or a mirror list): dnf options of that repository
# alone (a kickstart repo's --includepkgs, --excludepkgs, --cost, --proxy, --noverifyssl).
RepoOptions = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


@dataclasses.dataclass(frozen=True)
class Config:
    product: str
    version: str
    outdir: Path
    sources: tuple[str, ...] = ()
    repofiles: tuple[Path, ...] = ()
    mirrorlists: tuple[str, ...] = ()
    repo_options: RepoOptions = ()
    # How dnf fetches (not what): a proxy for every repository, TLS certificate checks.
    proxy: str | None = None
    sslverify: bool = True
    # Repository ids or globs of the --repo files to enable, then to disable.
    enablerepos: tuple[str, ...] = ()
    disablerepos: tuple[str, ...] = ()
    # lorax's automatic branding: install the system-release package (and its logos) dnf
    # finds; composer's own product templates name theirs instead.
    branding: bool = False
    release: str = ""
    variant: str = ""
    bugurl: str = ""
    isfinal: bool = False
    arch: str = dataclasses.field(default_factory=platform.machine)
    installpkgs: tuple[str, ...] = ()
    excludepkgs: tuple[str, ...] = ()
    add_templates: tuple[Path, ...] = ()
    # Strings from the command line; `composer lorax` adds lorax's two flags (domacboot, doupgrade) as bools.
    add_template_vars: tuple[tuple[str, str | bool], ...] = ()
    rootfs_type: RootfsType = RootfsType.BTRFS
    rootfs_size: int | None = None  # bytes of free room for the runtime's writes; None = default
    compression: Compression = Compression.XZ
    dracut_args: tuple[str, ...] = ()
    dracut_conf: Path | None = None
    nogpgcheck: bool = False
    # What dnf installs of each package: lorax's runtime choices (no docs, no weak deps);
    # a kickstart's %packages --excludedocs / --excludeWeakdeps set them as anaconda does.
    nodocs: bool = True
    weak_deps: bool = False
    # rpm's %_install_langs (%packages --instLangs): None installs every translation, "" none.
    install_langs: str | None = None
    dnf: DnfChoice = DnfChoice.AUTO
    # A root directory (e.g. Debian unstable's, made by scripts/dnf5-root) whose dnf runs the
    # transactions, inside bubblewrap; None: the host's dnf.
    dnf_root: Path | None = None
    # Where dnf's own logs go (composer lorax: beside --logfile, as lorax); None: the work directory.
    dnf_logdir: Path | None = None
    workdir: Path | None = None
    cachedir: Path = DEFAULT_CACHEDIR
    force: bool = False
    keep_workdir: bool = False
    # Reproducible builds: clamp every timestamp to this and derive UUIDs/serials from it.
    source_date_epoch: int | None = None
    # Reuse a populated tree from cachedir when its inputs match; False forces a clean build.
    use_cache: bool = True
    # Ship LiveOS/osmin.img.gz (a minimized-install delta against rootfs.img) in install.img.
    osmin: bool = False
    # A template set given by path (lorax's --sharedir); None: templates/<product> (product.template_dir).
    templatedir: Path | None = None


SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Far beyond any image we make, far below the 8 EiB where off_t (truncate, mkfs) overflows.
MAX_SIZE = 1 << 50


def parse_size(text: str, option: str) -> int:
    """'512M', '2G', '1048576' -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = t[-1:] if t[-1:] in SIZE_SUFFIXES and not t[-1:].isdigit() else ""
    number = t[: len(t) - len(suffix)]
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    # float() also takes "nan", "inf" and "1e400": none of them is a size.
    if not math.isfinite(value):
        raise ComposerError(f"{option}: not a size: {text!r} (use e.g. 512M or 2G)")
    if value < 0:
        raise ComposerError(f"{option}: size must not be negative: {text!r}")
    size = int(value * SIZE_SUFFIXES[suffix])
    if size > MAX_SIZE:
        raise ComposerError(f"{option}: {text!r} is too large (at most {MAX_SIZE >> 40}T)")
    return size


def parse_assignments(items: Sequence[str], option: str = "--add-template-var") -> tuple[tuple[str, str], ...]:
    """NAME=VALUE options (template variables) as pairs; NAME must be an identifier."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ComposerError(f"{option} {item!r}: expected NAME=VALUE with NAME a valid identifier")
        out.append((name, value))
    return tuple(out)
