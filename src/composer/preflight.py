"""Checks of a build's inputs that take a second, run before the build takes minutes.

Everything here only reads: a bad input stops composer before OUTDIR, the work
directory or the cache exist, with one line naming the option or file:line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from composer.config import Config
from composer.dnf import check_config, dnf_config, local_path, mirrorlist_urls, repofile_paths
from composer.product import RUNTIME_TEMPLATES, template_dir, template_variables
from composer.run import DATADIR, ComposerError, check_replaceable, output_path
from composer.templates import TemplateRunner


def check_root(command: str) -> None:
    """Composing needs root: dnf refuses to install into a tree otherwise (and rpm must
    give every file its owner). Say so now, not after a minute of work."""
    if os.geteuid() != 0:
        raise ComposerError(
            f"{command} needs root privileges: dnf installs the packages into the tree as root (run it as root or with sudo)"
        )


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_dir_creatable(path: Path, option: str) -> None:
    """`path` is a directory composer may write in, or one it can create."""
    path = Path(os.path.abspath(path))
    if path.exists():
        if not path.is_dir():
            raise ComposerError(f"{option} {path}: not a directory")
        where = path
    else:
        where = _nearest_existing(path.parent)
        if not where.is_dir():
            raise ComposerError(f"{option} {path}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ComposerError(f"{option} {path}: cannot write in {where} (permission denied or read-only)")


def check_outdir(outdir: Path, *, force: bool, option: str = "OUTDIR") -> None:
    """OUTDIR must not exist (unless --force, and then composer must have made it) and
    its parent must be writable: the output is built beside it and renamed into place."""
    final = output_path(outdir)
    check_replaceable(final, force=force, option=option)
    parent = _nearest_existing(final.parent)
    if not parent.is_dir():
        raise ComposerError(f"{option} {final}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ComposerError(f"{option} {final}: cannot write in {parent} (permission denied or read-only)")


# --------------------------------------------------------------------------- outputs vs inputs

# An output is never one of these and never contains one; nor does it go inside
# the pseudo filesystems, /boot or /etc (NOTHING_INSIDE).
SYSTEM_DIRS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/local",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/tmp",
)
NOTHING_INSIDE = ("/proc", "/sys", "/dev", "/boot", "/etc")


@dataclasses.dataclass(frozen=True)
class Place:
    """A path an output must keep away from, and how: `inside` False allows an output
    inside it (a work directory's parent), `what` names it in the message."""

    path: Path
    what: str
    inside: bool = True


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _relation(out: Path, other: Path) -> str | None:
    if out == other:
        return "is"
    if other in out.parents:
        return "is inside"
    if out in other.parents:
        return "contains"
    return None


def protected_places() -> list[Place]:
    places = [Place(Path(d), f"the system directory {d}", inside=d in NOTHING_INSIDE) for d in SYSTEM_DIRS]
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        places.append(Place(Path(home), f"your home directory ({home})", inside=False))
    return places


def check_outputs_apart(outputs: Iterable[tuple[str, Path]], inputs: Iterable[Place], *, protected: bool = True) -> None:
    """Every output (option, path) against every input and protected place: an output
    equal to one, inside one or containing one is refused before any work.

    An output is compared as itself (parent resolved, a symlink at its name not
    followed) and as what it resolves to; inputs as what they resolve to."""
    places = [*(protected_places() if protected else []), *inputs]
    outs = list(outputs)
    for option, out in outs:
        forms = {output_path(out), _real(out)}
        found: list[tuple[int, str, Place, Path]] = []
        for place in places:
            where = _real(place.path)
            for form in forms:
                rel = _relation(form, where)
                if rel is None or (rel == "is inside" and not place.inside):
                    continue
                found.append((("is", "is inside", "contains").index(rel), rel, place, where))
        if found:
            _, rel, place, where = min(found, key=lambda f: f[0])
            shown = f" ({where})" if where != Path(os.path.abspath(place.path)) else ""
            raise ComposerError(
                f"{option} {out} {rel} {place.what}{shown}: an output never touches an "
                f"input or a system place; choose another {option}"
            )
    for i, (opt_a, a) in enumerate(outs):
        for opt_b, b in outs[i + 1 :]:
            rel = _relation(output_path(a), output_path(b))
            if rel is not None:
                raise ComposerError(f"{opt_a} {a} {rel} {opt_b} {b}: give them different places")


def compose_inputs(cfg: Config) -> list[Place]:
    """What a compose reads or keeps, as places its OUTDIR must keep away from."""
    places = [Place(cfg.cachedir, f"--cachedir {cfg.cachedir}")]
    if cfg.workdir is not None:
        places.append(Place(cfg.workdir, f"--workdir {cfg.workdir}", inside=False))
    for url in cfg.sources:
        if (path := local_path(url, decoded=True)) is not None:
            places.append(Place(path, f"the package source {url}"))
    for url in cfg.mirrorlists:
        if (path := local_path(url, decoded=True)) is not None:
            places.append(Place(path, f"--mirrorlist {url}"))
            with contextlib.suppress(ComposerError):
                for base in mirrorlist_urls(url):
                    if (base_path := local_path(base, decoded=True)) is not None:
                        places.append(Place(base_path, f"{base}, listed by --mirrorlist {url}"))
    for f in cfg.repofiles:
        places.append(Place(f, f"--repo {f}"))
        places += [Place(p, f"the baseurl file://{p} of --repo {f}") for p in repofile_paths(f)]
    for t in cfg.add_templates:
        places.append(Place(t, f"--add-template {t}"))
    if cfg.dracut_conf is not None:
        places.append(Place(cfg.dracut_conf, f"--dracut-conf {cfg.dracut_conf}"))
    places.append(Place(DATADIR, f"composer's templates and data ({DATADIR})"))
    return places


def check_file(path: Path | None, option: str) -> None:
    if path is None:
        return
    if not path.exists():
        raise ComposerError(f"{option} {path}: no such file")
    if not path.is_file():
        raise ComposerError(f"{option} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ComposerError(f"{option} {path}: not readable (permission denied)")


def check_command_templates(cfg: Config, templates: Iterable[tuple[Path, str]]) -> None:
    """Render and parse templates (dry run, no tree): syntax errors, unknown commands,
    wrong arguments and `..` escapes are reported with file:line before dnf runs."""
    checker = TemplateRunner(
        tree=Path("/nonexistent-composer-tree"), templatedir=template_dir(cfg), variables=template_variables(cfg), dry_run=True
    )
    for path, option in templates:
        if option:
            check_file(path, option)
        checker.run(path.resolve())


def check_compose_inputs(cfg: Config, command: str, *, ks: Path | None = None) -> None:
    """All the cheap checks of `composer runtime|boot-iso|netboot`, in the order a user
    would fix them. `ks`: the --ks file, an input too."""
    check_root(command)
    templatedir = template_dir(cfg)  # unknown --product
    inputs = compose_inputs(cfg) + ([Place(ks, f"--ks {ks}")] if ks is not None else [])
    check_outputs_apart([("OUTDIR", cfg.outdir)], inputs)
    # composer writes in the cache and the work directory too: never in a source, and
    # the cache (dnf/, trees/) never a system directory itself (/var/cache/dnf is dnf's).
    sources = [p for p in inputs if not p.what.startswith(("--cachedir", "--workdir"))]
    check_outputs_apart([("--cachedir", cfg.cachedir)], sources)
    if cfg.workdir is not None:
        check_outputs_apart([("--workdir", cfg.workdir)], sources, protected=False)
    check_outdir(cfg.outdir, force=cfg.force)
    if cfg.workdir is not None:
        check_dir_creatable(cfg.workdir, "--workdir")
    else:
        check_dir_creatable(Path("/var/tmp"), "work directory")
    check_dir_creatable(cfg.cachedir, "--cachedir")
    check_config(dnf_config(cfg))
    check_file(cfg.dracut_conf, "--dracut-conf")
    product = [(templatedir / name, "") for name in RUNTIME_TEMPLATES if (templatedir / name).is_file()]
    check_command_templates(cfg, product + [(t, "--add-template") for t in cfg.add_templates])


# --------------------------------------------------------------------------- values are data
# Every value that reaches a template, a boot menu, a kernel command line or a config
# file is checked for its kind here, before anything runs. (The templates also take
# values as data; see templates.TemplateValue. These checks name the option.)

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# rpm's version/release alphabet (and "rawhide"): no spaces, quotes or shell/menu syntax.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~^-]*")
_PRODUCT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]*")
_VARIANT = re.compile(r"[A-Za-z0-9._+-]*( [A-Za-z0-9._+-]+)*")
_ARCH = re.compile(r"[a-z0-9_]+")
# Characters that are syntax in GRUB, isolinux/pxelinux, iPXE or a shell: never in a
# kernel argument or another value that lands in a boot menu.
MENU_SYNTAX = set("\"'\\`$;{}<>|&#")
MAX_VALUE = 4096


def describe_char(ch: str) -> str:
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}
    if "\ud800" <= ch <= "\udfff":
        return f"byte 0x{ord(ch) - 0xDC00:02x}, which is not UTF-8" if ch >= "\udc80" else "a lone surrogate"
    return names.get(ch, f"{ch!r}" if ch.isprintable() else f"control character U+{ord(ch):04X}")


def check_line(option: str, value: str) -> str:
    """One line of text: no line break, tab or other control character, sane length.
    (`option` ending in "=" is a NAME=VALUE option: the value is shown right after it.)"""
    bad = _CONTROL.search(value)
    if bad:
        sep = "" if option.endswith("=") else " "
        why = "give it in UTF-8" if "\ud800" <= bad.group() <= "\udfff" else "a value is one line of text"
        raise ComposerError(f"{option}{sep}{value!r}: holds {describe_char(bad.group())}; {why}")
    if len(value) > MAX_VALUE:
        raise ComposerError(f"{option}: {len(value)} characters, at most {MAX_VALUE}")
    return value


def _check_pattern(option: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    check_line(option, value)
    if not pattern.fullmatch(value):
        raise ComposerError(f"{option} {value!r}: not {what}")
    return value


def check_version(option: str, value: str, *, empty: bool = False) -> str:
    if empty and value == "":
        return value
    return _check_pattern(option, value, _VERSION, "a version (letters, digits and . _ + ~ ^ -, e.g. 41 or 9.4)")


def check_kernel_arg(option: str, value: str) -> str:
    """One kernel argument: no white space (that would make two) and no menu syntax."""
    check_line(option, value)
    if not value:
        raise ComposerError(f"{option}: an empty kernel argument")
    for ch in value:
        if ch.isspace() or ch in MENU_SYNTAX or not ch.isascii():
            raise ComposerError(
                f"{option} {value!r}: holds {describe_char(ch)}; a kernel argument is one word "
                "without quotes or boot-menu syntax (give several arguments separately)"
            )
    return value


def check_kernel_args(option: str, value: str) -> tuple[str, ...]:
    """Several kernel arguments in one value, separated by spaces (mkksiso's -c and -r):
    each is checked as check_kernel_arg checks boot-iso's --kernel-arg."""
    check_line(option, value)
    words = tuple(check_kernel_arg(option, w) for w in value.split(" ") if w)
    if not words:
        raise ComposerError(f"{option} {value!r}: no kernel argument in it (leave the option out)")
    return words


def check_menu_value(option: str, value: str) -> str:
    """A free value that may reach a boot menu: one line, no menu syntax."""
    check_line(option, value)
    for ch in value:
        if ch in MENU_SYNTAX:
            sep = "" if option.endswith("=") else " "
            raise ComposerError(f"{option}{sep}{value!r}: holds {describe_char(ch)}, which is syntax in boot menus")
    return value


def check_url_value(option: str, value: str) -> str:
    check_menu_value(option, value)
    if any(ch.isspace() for ch in value):
        raise ComposerError(f"{option} {value!r}: a URL has no white space")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ComposerError(f"{option} {value!r}: not a URL ({e})") from None
    if not parts.scheme or not (parts.netloc or parts.scheme == "file"):
        raise ComposerError(f"{option} {value!r}: not a URL (e.g. https://bugzilla.example.com/)")
    return value


def check_template_vars(option: str, items: Iterable[tuple[str, str | bool]], *, menu: bool = False) -> None:
    for name, value in items:
        if isinstance(value, bool):  # lorax's flags, set by composer itself
            continue
        if menu:
            check_menu_value(f"{option} {name}=", value)
        else:
            check_line(f"{option} {name}=", value)


def check_config_values(cfg: Config) -> None:
    """The kinds of a compose's values (command line and kickstart)."""
    _check_pattern("--product", cfg.product, _PRODUCT, "a product name (letters, digits, space and . _ + -)")
    check_version("--version", cfg.version)
    check_version("--release", cfg.release, empty=True)
    _check_pattern("--variant", cfg.variant, _VARIANT, "a variant name (letters, digits and . _ + -)")
    if cfg.bugurl:
        check_url_value("--bugurl", cfg.bugurl)
    check_arch("--buildarch", cfg.arch)
    for p in cfg.installpkgs:
        _check_word("--installpkgs", p)
    for p in cfg.excludepkgs:
        _check_word("--excludepkgs", p)
    for a in cfg.dracut_args:
        check_line("--dracut-arg", a)
    for url in cfg.sources:
        check_line("--source", url)
    check_template_vars("--add-template-var", cfg.add_template_vars)


def check_arch(option: str, value: str) -> str:
    return _check_pattern(option, value, _ARCH, "an architecture (e.g. x86_64, aarch64)")


def _check_word(option: str, value: str) -> str:
    check_line(option, value)
    # A comps group may be named by its name ("@Development Tools"), which dnf takes too.
    if not value or value == "@" or (not value.startswith("@") and any(ch.isspace() for ch in value)):
        raise ComposerError(f"{option} {value!r}: a package name or glob is one word")
    return value
