"""One table of the options that make a Config, for both command lines: composer's own
(runtime, boot-iso, netboot) and lorax's (`composer lorax`, the `lorax` command).

mkosi's SETTINGS table is the model. Each row (a `Setting`) is one Config field, once:
how composer's command line spells it, how lorax's does (lorax's names, dests and
defaults, exactly), the function that turns the parsed value into the Config value, and,
where lorax's meaning differs, lorax's own function and a `differs` note that says how.
composer's parsers add their options in the table's order (`add_composer_options`);
lorax's parser places the rows among its own options in lorax's order
(`add_lorax_options`). `config_values` makes the Config fields of either command line.

Options a command line has that are no Config field (lorax's --volid and --config,
composer's --kernel-arg and --ks...) are declared by that command line alone."""

from __future__ import annotations

import argparse
import operator
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from composer.cli.common import source_date_epoch, trusted_dir
from composer.config import DEFAULT_CACHEDIR, Compression, DnfChoice, RootfsType, parse_assignments, parse_size
from composer.dnf import DNF_ROOT_ENV, proxy_url
from composer.run import ComposerError

CommandLine = Literal["composer", "lorax"]

# lorax's DRACUT_DEFAULT (pylorax 40.5.19); `composer lorax` adds lorax's anaconda modules
# for a lorax template set (pipelines.lorax.LORAX_ANACONDA_DRACUT).
LORAX_DRACUT_DEFAULT = ("--xz", "--install", "/.buildstamp", "--no-early-microcode", "--add", "fips")
LORAX_ROOTFS_TYPES = ("squashfs", "squashfs-ext4", "erofs", "erofs-ext4")

# lorax rootfs type -> (composer's rootfs type, what differs, or "" when it is the same layout)
ROOTFS_MAP: dict[str, tuple[RootfsType, str]] = {
    "squashfs": (RootfsType.SQUASHFS, ""),
    "squashfs-ext4": (RootfsType.EXT4, ""),
    "erofs": (
        RootfsType.EROFS,
        ("--rootfs-type erofs: install.img is squashfs holding LiveOS/rootfs.img (erofs), not a bare erofs image"),
    ),
    "erofs-ext4": (RootfsType.EXT4, ("--rootfs-type erofs-ext4: LiveOS/rootfs.img (ext4) is wrapped in squashfs, not erofs")),
    "btrfs": (RootfsType.BTRFS, ""),  # composer's own
}


# Options whose values are themselves options (`--dracut-arg --add`), on both command lines:
# argparse would take such a value for an unknown or ambiguous option, so the command
# lines glue it to its option (`--dracut-arg=--add`) before parsing.
PASS_THROUGH_OPTIONS = ("--dracut-arg",)


@dataclass(frozen=True)
class Spelling:
    """An option as one command line spells it: argparse's names and keywords. `value`,
    when given, replaces the row's (the option means something else there); `derive`
    makes the field from the whole namespace instead (a value made from several
    options, or, with no names, from none of its own)."""

    names: tuple[str, ...]
    kwargs: Mapping[str, Any]
    value: Callable[[Any], Any] | None = None
    derive: Callable[[argparse.Namespace], Any] | None = None

    def add_to(self, group: argparse._ActionsContainer) -> None:
        if self.names:  # a fresh list default for every parser, as a literal in its call would be
            kwargs: dict[str, Any] = {k: list(v) if isinstance(v, list) else v for k, v in self.kwargs.items()}
            group.add_argument(*self.names, **kwargs)

    def dest(self) -> str:
        if "dest" in self.kwargs:
            return str(self.kwargs["dest"])
        long = next((n for n in self.names if n.startswith("--")), self.names[0])
        return long.lstrip("-").replace("-", "_")


def spell(
    *names: str,
    value: Callable[[Any], Any] | None = None,
    derive: Callable[[argparse.Namespace], Any] | None = None,
    **kwargs: Any,
) -> Spelling:
    return Spelling(names, kwargs, value, derive)


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Setting:
    """One Config field and its option on each command line (None: that command line has none)."""

    field: str
    composer: Spelling | None
    lorax: Spelling | None
    value: Callable[[Any], Any] = _same  # the parsed option -> the Config value
    differs: str = ""  # how lorax's option differs from composer's, when it does

    def spelling(self, cli: CommandLine) -> Spelling | None:
        return self.composer if cli == "composer" else self.lorax


def _proxy(value: str | None) -> str | None:
    return proxy_url(value) if value else None


def _resolved(paths: list[Path]) -> tuple[Path, ...]:
    return tuple(p.resolve() for p in paths)


def _size(text: str | None) -> int | None:
    return parse_size(text, "--rootfs-size") if text is not None else None


def _dnf_root(option: Path | None) -> Path | None:
    """--dnf-root, else $COMPOSER_DNF_ROOT, as an absolute directory."""
    name = "--dnf-root"
    if option is None:
        env = os.environ.get(DNF_ROOT_ENV, "")
        if not env:
            return None
        option, name = Path(env), DNF_ROOT_ENV
    if not option.is_dir():
        raise ComposerError(f"{name} {option}: no such directory (scripts/dnf5-root makes a root with dnf5)")
    return option.resolve()


LORAX_TMP = "/var/tmp/lorax"  # lorax's --tmp default


def _lorax_workdir(args: argparse.Namespace) -> Path:
    """composer makes its work directory inside lorax's --workdir, else --tmp (and removes it
    after the build), when no user but root or composer's own could change what is there."""
    if args.workdir is not None:
        return trusted_dir(args.workdir, "--workdir")
    if args.tmp is not None:
        return trusted_dir(Path(args.tmp), "--tmp")
    tmp = Path(LORAX_TMP)
    if tmp.is_dir() and not os.access(tmp, os.W_OK | os.X_OK):
        # root's (a lorax run as root made it) and composer runs as a user, e.g. on a builder
        # Pungi logs in to: /var/tmp itself (sticky), where composer's work directory gets a fresh name.
        tmp = tmp.parent
    return trusted_dir(tmp, "--tmp")


def _lorax_nogpgcheck(args: argparse.Namespace) -> bool:
    # lorax does not check signatures of --source repositories (dnf's default for added ones).
    return bool(args.source or args.mirrorlist)


# Config's fields in the order composer's parsers add them (and make them: a value's error
# names the first option that is wrong, in this order).
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "outdir",
        spell("outdir", metavar="OUTDIR", type=Path, help="output directory (refused if it exists, unless --force)"),
        spell("outputdir", metavar="OUTPUTDIR", type=Path, value=Path.resolve),
    ),
    Setting(
        "product",
        spell("-p", "--product", required=True, help="product name; selects templates/<product>"),
        spell("-p", "--product", required=True, metavar="PRODUCT"),
    ),
    Setting(
        "version",
        spell("-v", "--version", required=True, help="product version (dnf releasever)"),
        spell("-v", "--version", required=True, metavar="VERSION"),
    ),
    Setting(
        "release",
        spell("-r", "--release", default="", help="release string"),
        spell("-r", "--release", required=True, metavar="RELEASE"),
    ),
    Setting(
        "variant",
        spell("-t", "--variant", default="", help="variant name"),
        spell("-t", "--variant", default="", metavar="VARIANT"),
    ),
    Setting(
        "bugurl",
        spell("-b", "--bugurl", default="", help="bug reporting URL"),
        spell("-b", "--bugurl", default="your distribution provided bug reporting tool", metavar="URL"),
    ),
    Setting(
        "isfinal",
        spell("--isfinal", action="store_true", help="this is a final release"),
        spell("--isfinal", action="store_true", default=False),
    ),
    Setting(
        "arch",
        spell("--buildarch", default=platform.machine(), help="architecture to build for (default: this host's)"),
        spell("--buildarch", default=None, metavar="ARCH", value=lambda v: v or platform.machine()),
        differs="lorax: empty or not given means this host's",
    ),
    Setting(
        "sources",
        spell("-s", "--source", action="append", default=[], metavar="URL", help="package repository URL (repeatable)"),
        spell("-s", "--source", action="append", default=[], metavar="REPOSITORY"),
        value=tuple,
    ),
    Setting(
        "repofiles",
        spell("--repo", action="append", default=[], type=Path, metavar="FILE", help="dnf .repo file (repeatable)"),
        spell("--repo", action="append", default=[], dest="repos", metavar="REPOSITORY", type=Path),
        value=_resolved,
    ),
    Setting(
        "mirrorlists",
        spell(
            "-m",
            "--mirrorlist",
            action="append",
            default=[],
            metavar="URL",
            help="mirrorlist URL of a package repository (repeatable)",
        ),
        spell("-m", "--mirrorlist", action="append", default=[], metavar="REPOSITORY"),
        value=tuple,
    ),
    Setting(
        "enablerepos",
        spell(
            "--enablerepo",
            action="append",
            default=[],
            metavar="GLOB",
            help="enable these repositories of the --repo files (repeatable)",
        ),
        spell("--enablerepo", action="append", default=[], dest="enablerepos", metavar="[repo]"),
        value=tuple,
    ),
    Setting(
        "disablerepos",
        spell(
            "--disablerepo",
            action="append",
            default=[],
            metavar="GLOB",
            help="disable these repositories of the --repo files, after --enablerepo (repeatable)",
        ),
        spell("--disablerepo", action="append", default=[], dest="disablerepos", metavar="[repo]"),
        value=tuple,
    ),
    Setting(
        "proxy",
        spell("--proxy", default=None, metavar="URL", help="proxy for every repository, e.g. http://host:3128"),
        spell("--proxy", default=None, metavar="HOST"),
        value=_proxy,
    ),
    Setting(
        "sslverify",
        spell("--noverifyssl", action="store_true", help="do not verify the repositories' TLS certificates"),
        spell("--noverifyssl", action="store_true", default=False),
        value=operator.not_,
    ),
    Setting(
        "installpkgs",
        spell(
            "-i", "--installpkgs", action="append", default=[], metavar="PKG", help="extra package (glob) to install (repeatable)"
        ),
        spell("-i", "--installpkgs", action="append", default=[], metavar="PACKAGE"),
        value=tuple,
    ),
    Setting(
        "excludepkgs",
        spell(
            "-e", "--excludepkgs", action="append", default=[], metavar="PKG", help="package (glob) never to install (repeatable)"
        ),
        spell("-e", "--excludepkgs", action="append", default=[], metavar="PACKAGE"),
        value=tuple,
    ),
    Setting(
        "add_templates",
        spell(
            "--add-template",
            action="append",
            default=[],
            type=Path,
            metavar="FILE",
            help="extra template run after postinstall (repeatable)",
        ),
        spell("--add-template", dest="add_templates", action="append", default=[], type=Path),
        value=tuple,
    ),
    Setting(
        "add_template_vars",
        spell(
            "--add-template-var",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="variable for the templates (repeatable)",
        ),
        spell("--add-template-var", dest="add_template_vars", action="append", default=[]),
        value=parse_assignments,
    ),
    Setting(
        "rootfs_type",
        spell(
            "--rootfs-type",
            default="btrfs",
            choices=[t.value for t in RootfsType],
            help="filesystem of LiveOS/rootfs.img (squashfs: no rootfs.img)",
        ),
        spell(
            "--rootfs-type",
            default="squashfs",
            dest="rootfs_type",
            choices=[*LORAX_ROOTFS_TYPES, "btrfs"],
            metavar="ROOTFSTYPE",
            help=f"{', '.join(LORAX_ROOTFS_TYPES)} (lorax's), btrfs (composer's)",
            value=lambda v: ROOTFS_MAP[v][0],
        ),
        value=RootfsType,
        differs="lorax: lorax's four types (ROOTFS_MAP: what each becomes, and what then differs), and composer's btrfs",
    ),
    Setting(
        "rootfs_size",
        spell(
            "--rootfs-size",
            default=None,
            metavar="SIZE",
            help="free room in rootfs.img for the runtime's writes, e.g. 512M (sparse)",
        ),
        spell("--rootfs-size", type=int, default=3, help="GiB (default 3)", value=lambda gib: gib << 30),
        value=_size,
        differs="lorax: whole GiB (default 3, at least 1); composer: a size with its unit (512M, 2G), default: the product's",
    ),
    Setting(
        "compression",
        spell("--compression", default="xz", choices=[c.value for c in Compression], help="squashfs compressor"),
        None,
        value=Compression,
        differs="lorax: no option; lorax.conf's [compression] type (xz when composer has not got that one)",
    ),
    Setting(
        "dracut_args",
        spell("--dracut-arg", action="append", default=[], metavar="ARG", help="extra dracut argument (repeatable)"),
        spell(
            "--dracut-arg",
            action="append",
            dest="dracut_args",
            default=None,
            help="dracut argument; replaces the defaults (once per argument)",
            value=lambda v: tuple(v) if v is not None else LORAX_DRACUT_DEFAULT,
        ),
        value=tuple,
        differs="lorax: replaces the default dracut arguments (LORAX_DRACUT_DEFAULT) instead of adding to them",
    ),
    Setting(
        "dracut_conf",
        spell("--dracut-conf", type=Path, default=None, metavar="FILE", help="extra dracut configuration file"),
        spell("--dracut-conf", default=None, type=Path, value=lambda p: p.resolve() if p else None),
    ),
    Setting(
        "nogpgcheck",
        spell("--nogpgcheck", action="store_true", help="do not check package signatures"),
        spell(derive=_lorax_nogpgcheck),
        differs="lorax: no option; implied by --source or --mirrorlist (lorax does not check their signatures)",
    ),
    Setting(
        "dnf",
        spell(
            "--dnf",
            default="auto",
            choices=[c.value for c in DnfChoice],
            help="dnf command line to drive (default: whatever `dnf` is; dnf5 on Fedora 41+)",
        ),
        None,
        value=DnfChoice,
    ),
    Setting(
        "dnf_root",
        spell(
            "--dnf-root",
            type=Path,
            default=None,
            metavar="DIR",
            help="run dnf and rpm from this root directory (bubblewrap), e.g. one with dnf5 made by "
            "scripts/dnf5-root (default: $COMPOSER_DNF_ROOT, else the host's dnf)",
        ),
        None,
        value=_dnf_root,
    ),
    Setting(
        "workdir",
        spell("--workdir", type=Path, default=None, help="where the tree is built (default: /var/tmp)"),
        spell("--workdir", default=None, type=Path, derive=_lorax_workdir),
        differs="lorax: --workdir, else --tmp (default /var/tmp/lorax), refused unless only root or composer's "
        "user can change what is in it (cli.common.trusted_dir); composer's work directory is made inside",
    ),
    Setting(
        "cachedir",
        spell(
            "--cachedir",
            type=Path,
            default=DEFAULT_CACHEDIR,
            help=f"persistent cache (dnf packages, trees; default: {DEFAULT_CACHEDIR})",
        ),
        spell("--cachedir", default=None, type=Path, value=lambda p: p.resolve() if p else DEFAULT_CACHEDIR),
        value=Path.resolve,
    ),
    Setting(
        "keep_workdir",
        spell("--keep-workdir", action="store_true", help="keep the work directory (for debugging)"),
        None,
    ),
    Setting(
        "force",
        spell("--force", action="store_true", help="replace OUTDIR once the new output is complete"),
        spell("--force", action="store_true", default=False),
    ),
    Setting(
        "source_date_epoch",
        spell(
            "--source-date-epoch",
            type=int,
            default=None,
            metavar="SECONDS",
            help="reproducible build: timestamps clamped to this (default: $SOURCE_DATE_EPOCH if set)",
        ),
        None,
        value=source_date_epoch,
    ),
    Setting(
        "use_cache",
        spell("--no-cache", action="store_true", help="do not reuse a cached populated tree"),
        None,
        value=operator.not_,
    ),
    Setting(
        "osmin",
        spell(
            "--osmin",
            action="store_true",
            help="also ship LiveOS/osmin.img.gz, a minimized-install delta of rootfs.img (ext4 only)",
        ),
        None,
    ),
    Setting(
        "branding",
        None,
        spell("--skip-branding", action="store_true", default=False),
        value=operator.not_,
        differs="composer: no option; its own product templates name their release package",
    ),
)

_BY_FIELD = {s.field: s for s in SETTINGS}


def add_composer_options(p: argparse.ArgumentParser) -> None:
    """composer's options that make a Config, in the table's order."""
    for s in SETTINGS:
        if s.composer is not None:
            s.composer.add_to(p)


def add_lorax_options(group: argparse._ActionsContainer, *fields: str) -> None:
    """These fields' lorax options, in this order (lorax's parser places them among its own)."""
    for name in fields:
        spelling = _BY_FIELD[name].lorax
        if spelling is None:
            raise AssertionError(f"{name}: lorax has no option for it")
        spelling.add_to(group)


def config_values(args: argparse.Namespace, cli: CommandLine) -> dict[str, Any]:
    """The Config fields `cli`'s options set, from its parsed arguments. A field derived
    from several options (lorax's work directory and its trust check) is made first, then
    the others in the table's order."""
    values: dict[str, Any] = {}
    rows = [(s, sp) for s in SETTINGS if (sp := s.spelling(cli)) is not None]
    for s, sp in rows:
        if sp.derive is not None:
            values[s.field] = sp.derive(args)
    for s, sp in rows:
        if sp.derive is None:
            values[s.field] = (sp.value or s.value)(getattr(args, sp.dest()))
    return values
