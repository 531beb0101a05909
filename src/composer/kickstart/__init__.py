"""Kickstart input (`--ks FILE`), parsed with pykickstart.

What composer takes from a kickstart:
* ``url --url=URL|--mirrorlist=URL`` and ``repo --name=N --baseurl=URL|--mirrorlist=URL``:
  package sources, with the options anaconda hands dnf for each (``--includepkgs``,
  ``--excludepkgs``, ``--cost``, ``--proxy``, ``--noverifyssl``: RepoOptions);
* ``%packages``: names and globs are installed on top of the templates' set,
  ``-name`` excludes a package; ``@group`` lines are reported unused (boot-iso, lorax);
  `composer livemedia` installs groups and environments (kickstart.packages);
* ``bootloader --append="ARGS"``: kernel arguments for the generated boot menus.
Every other command, %pre/%post/%traceback script and unsupported option is
reported by name (never silently ignored). A kickstart pykickstart rejects gives
one error with the file and line.

`composer livemedia` reads the same parse further (load_live_kickstart): the system
commands and scripts (kickstart.system), applied to the installed tree by kickstart.apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from composer.config import Config, RepoOptions
from composer.dnf import check_proxy, check_source, check_url, split_userinfo
from composer.kickstart.packages import PackageRequest, missing_group_message, package_request
from composer.kickstart.system import System, read_system
from composer.preflight import check_kernel_arg, check_line
from composer.run import ComposerError, info

# Commands composer reads; everything else the kickstart says is reported.
USED_COMMANDS = ("url", "repo", "bootloader")


@dataclasses.dataclass(frozen=True)
class KickstartInput:
    path: Path
    sources: tuple[str, ...] = ()
    mirrorlists: tuple[str, ...] = ()
    installpkgs: tuple[str, ...] = ()
    excludepkgs: tuple[str, ...] = ()
    kernel_args: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()  # command / section / option names composer did not use
    repo_options: RepoOptions = ()  # dnf options of the repository of a source or mirror list URL


def _parse_error(path: Path, e: Exception) -> ComposerError:
    lineno = getattr(e, "lineno", None)
    message = getattr(e, "message", None) or str(e)
    message = " ".join(message.split())
    where = f"{path}:{lineno}" if lineno else f"{path}"
    return ComposerError(f"kickstart {where}: {message}")


# %include nesting: deeper than this is a mistake (pykickstart itself would recurse
# until Python's stack runs out on a loop).
MAX_INCLUDE_DEPTH = 16
_INCLUDE = re.compile(r"^\s*%(include|ksappend)\s+(\S+)")


def _include_files(path: Path) -> list[Path]:
    """The kickstart and the local files it %includes, checked for loops and depth
    before pykickstart reads them (remote and missing includes are left to it)."""
    found: list[Path] = []

    def walk(f: Path, chain: list[Path]) -> None:
        found.append(f)
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return  # pykickstart reports it
        for n, line in enumerate(lines, 1):
            m = _INCLUDE.match(line)
            if not m or "://" in m.group(2):
                continue
            inc = Path(m.group(2))
            if not inc.is_file():
                continue
            real = inc.resolve()
            where = f"kickstart {f}:{n}: %{m.group(1)} {m.group(2)}"
            if real in chain:
                loop = " -> ".join(p.name for p in [*chain[chain.index(real) :], real])
                raise ComposerError(f"{where}: an include loop ({loop}); remove the %include that closes it")
            if len(chain) >= MAX_INCLUDE_DEPTH:
                raise ComposerError(f"{where}: includes nested deeper than {MAX_INCLUDE_DEPTH}; flatten them")
            walk(real, [*chain, real])

    walk(path, [path.resolve()])
    return list(dict.fromkeys(found))


def _lines(files: list[Path]) -> Iterator[tuple[Path, list[str]]]:
    """Each readable kickstart file with its lines (an unreadable one is skipped: the parse said why)."""
    for f in files:
        try:
            yield f, f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue


def _line_of(files: list[Path], lineno: int | None, command: str) -> str:
    """FILE:LINE of a kickstart command (pykickstart keeps the line, not the file)."""
    if not lineno:
        return str(files[0])
    for f, lines in _lines(files):
        if 0 < lineno <= len(lines) and lines[lineno - 1].split()[:1] == [command]:
            return f"{f}:{lineno}"
    return f"{files[0]}:{lineno}"


def _token_line(files: list[Path], token: str) -> str | None:
    """FILE:LINE of the first line starting with `token` and a space or its end (a %packages
    group line: a group's name may hold spaces)."""
    for f, lines in _lines(files):
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line == token or line.startswith(token + " "):
                return f"{f}:{n}"
    return None


def _unsplittable_line(files: list[Path]) -> str:
    """FILE:LINE of the first line shell-style splitting fails on (else the first file)."""
    for f, lines in _lines(files):
        for n, line in enumerate(lines, 1):
            try:
                shlex.split(line)
            except ValueError:
                return f"{f}:{n}"
    return str(files[0])


def read_kickstart(path: Path, *, includes_required: bool = True) -> Any:
    """pykickstart's handler for `path` (latest syntax); every parse error as one line.

    includes_required=False allows %include of files that only exist at install time.
    """
    # Deferred: pykickstart is slow to import and only --ks and mkksiso need it.
    from pykickstart import errors as kserrors
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    handler = makeVersion()
    parser = KickstartParser(handler, missingIncludeIsFatal=includes_required)
    try:
        parser.readKickstart(str(path))
    except kserrors.KickstartError as e:
        raise _parse_error(path, e) from None
    except OSError as e:
        raise ComposerError(f"kickstart {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ComposerError(f"kickstart {path}: not a text file ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ComposerError(f"kickstart {path}: %include nested too deeply (a loop through a remote include?)") from None
    except ValueError as e:
        # pykickstart lets some errors through unwrapped (shlex's "No closing quotation").
        raise ComposerError(f"kickstart {_unsplittable_line(_include_files(path))}: cannot parse: {e}") from None
    return handler


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise ComposerError(f"--ks {path}: no such file")
    if not path.is_file():
        raise ComposerError(f"--ks {path}: not a regular file")


@dataclasses.dataclass
class _Sources:
    """The package sources of the `url` and `repo` commands, checked as they are read."""

    files: list[Path]
    urls: list[str] = dataclasses.field(default_factory=list)
    mirrorlists: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    options: list[tuple[str, tuple[tuple[str, str], ...]]] = dataclasses.field(default_factory=list)

    def take(self, cmd: Any, command: str, url: str | None, url_option: str, shown: str, named: str) -> None:
        """A package source of `url` or `repo` (shown: how a bad source is named), its mirror
        list and their dnf options; a metalink and the options composer does not act on yet are
        reported unused (named: how the report names the command)."""
        where = _line_of(self.files, getattr(cmd, "lineno", None), command)
        for value in (url, getattr(cmd, "mirrorlist", None), getattr(cmd, "proxy", None)):
            split_userinfo(value or "")  # a password in it is masked wherever composer shows it
        if url:
            check_line(f"kickstart {where}: {command} {url_option}", url)
            check_source(url, f"kickstart {where}: {shown}")
            self.urls.append(url)
        mirrorlist = getattr(cmd, "mirrorlist", None)
        if mirrorlist:
            check_line(f"kickstart {where}: {command} --mirrorlist", mirrorlist)
            check_url(mirrorlist, f"kickstart {where}: {shown.rsplit(' ', 1)[0]} --mirrorlist")
            self.mirrorlists.append(mirrorlist)
        options = _dnf_options(cmd, f"kickstart {where}: {command}")
        self.options += [(u, options) for u in (url, mirrorlist) if u and options]
        for option in _REPO_NOT_YET:
            if getattr(cmd, option, None):
                self.unused.append(f"{named} --{option}")


# Options of `url`/`repo` composer does not act on yet (each reported by name): a metalink
# (dnf's own: no base URL to check), TLS client files, `repo --install` (a .repo file in the
# installed system), `--ignoregroups` (a tree composition option).
_REPO_NOT_YET = ("metalink", "sslcacert", "sslclientcert", "sslclientkey", "install", "ignoregroups")


def _dnf_options(cmd: Any, shown: str) -> tuple[tuple[str, str], ...]:
    """The options of `url` or `repo` anaconda hands dnf for that repository, as dnf names them."""
    found: list[tuple[str, str]] = []
    for option in ("includepkgs", "excludepkgs"):
        globs = getattr(cmd, option, None) or []
        for glob in globs:
            if not glob or any(c.isspace() or c == "," or not c.isprintable() for c in glob):
                raise ComposerError(f"{shown} --{option}: {glob!r} is not a package name or glob")
        if globs:
            found.append((option, ",".join(globs)))
    if getattr(cmd, "cost", None) is not None:
        found.append(("cost", str(cmd.cost)))
    if getattr(cmd, "proxy", None):
        check_proxy(cmd.proxy, f"{shown} --proxy")
        found.append(("proxy", cmd.proxy))
    if getattr(cmd, "noverifyssl", False):
        found.append(("sslverify", "0"))
    return tuple(found)


def _read_sources(handler: Any, files: list[Path]) -> _Sources:
    """`url` first, then every `repo`, in the kickstart's order."""
    found = _Sources(files)
    url = handler.url
    if getattr(url, "seen", False):
        found.take(url, "url", url.url, "--url", "url --url", "url")
    for repo in handler.repo.repoList:
        found.take(repo, "repo", repo.baseurl, "--baseurl", f"repo --name={repo.name} --baseurl", f"repo {repo.name}")
    return found


def _unused_groups(pkgs: Any) -> list[str]:
    """%packages groups and environments: composer has no comps data to expand them."""
    unused = [f"%packages @{g.name}" for g in pkgs.groupList]
    unused += [f"%packages -@{g.name}" for g in pkgs.excludedGroupList]
    if getattr(pkgs, "environment", None):
        unused.append(f"%packages @^{pkgs.environment}")
    return unused


def _kernel_args(handler: Any, files: list[Path]) -> tuple[str, ...]:
    """The arguments of `bootloader --append`, each checked as one kernel argument."""
    bl = handler.bootloader
    if not (getattr(bl, "seen", False) and bl.appendLine):
        return ()
    where = _line_of(files, getattr(bl, "lineno", None), "bootloader")
    try:
        kernel_args = tuple(shlex.split(bl.appendLine))
    except ValueError as e:
        raise ComposerError(f"kickstart {where}: bootloader --append: {e}") from None
    for arg in kernel_args:
        check_kernel_arg(f"kickstart {where}: bootloader --append", arg)
    return kernel_args


def _check_package_lines(pkgs: Any, files: list[Path]) -> None:
    names = (*pkgs.packageList, *pkgs.excludedList)
    if names:
        where = _line_of(files, getattr(pkgs, "lineno", None), "%packages")
        for p in names:
            check_line(f"kickstart {where}: %packages", p)


def _unused_commands(handler: Any) -> list[str]:
    """Names of the commands the kickstart has that composer does not read, sorted."""
    seen_names: set[str] = set()
    seen_objects: set[int] = set()
    for name, cmd in sorted(handler.commands.items()):
        if not getattr(cmd, "seen", False) or name in USED_COMMANDS:
            continue
        # One command object can stand under several names (aliases): report it once.
        if id(cmd) in seen_objects:
            continue
        seen_objects.add(id(cmd))
        seen_names.add(name)
    return sorted(seen_names)


_SCRIPT_KINDS = {0: "%pre", 1: "%post", 2: "%traceback", 3: "%pre-install", 4: "%onerror"}


def _with_unused_scripts(handler: Any, unused: list[str]) -> list[str]:
    """`unused` and each kind of script section the kickstart has, once."""
    unused = list(unused)
    for script in handler.scripts:
        kind = _SCRIPT_KINDS.get(script.type, "%script")
        if kind not in unused:
            unused.append(kind)
    return unused


def load_kickstart(path: Path) -> KickstartInput:
    """Parse a kickstart file and pick out what composer uses."""
    return _load(Path(path))[0]


@dataclasses.dataclass(frozen=True)
class LiveKickstart:
    """A kickstart for an image install (`composer livemedia`): its package part and its system part."""

    packages: KickstartInput
    system: System
    ignore_missing: bool = False  # %packages --ignoremissing
    not_yet: tuple[str, ...] = ()  # options composer accepts but does not act on yet (one report line)
    request: PackageRequest = PackageRequest()  # packages.installpkgs/excludepkgs, with the groups' lines
    # %packages --excludedocs / --excludeWeakdeps: anaconda installs docs and weak deps unless told not to
    nodocs: bool = False
    weak_deps: bool = True
    install_langs: str | None = None  # %packages --instLangs (None: every translation)

    def missing_group(self, spec: str) -> ComposerError:
        """The error for a group or environment of %packages no repository has."""
        return ComposerError(missing_group_message(self.request, spec))


def load_live_kickstart(path: Path) -> LiveKickstart:
    """Parse a kickstart for `composer livemedia`: every command honoured, ignored as
    anaconda ignores it for an image install, or refused with its FILE:LINE."""
    ks, handler, files = _load(Path(path))
    pkgs = handler.packages
    section = _token_line(files, "%packages") or str(files[0])
    request = package_request(pkgs, lambda token: _token_line(files, token), section)
    unused = tuple(u for u in ks.unused if not u.startswith(("%packages @", "%packages -@")))
    ks = dataclasses.replace(ks, installpkgs=request.install, excludepkgs=request.exclude, unused=unused)
    system = read_system(handler, lambda cmd, name: _line_of(files, getattr(cmd, "lineno", None), name), path)
    from pykickstart.constants import KS_MISSING_IGNORE  # deferred, as in read_kickstart

    ignore_missing = pkgs.handleMissing == KS_MISSING_IGNORE
    if pkgs.instLangs and not re.fullmatch(r"[A-Za-z0-9_@.-]+(:[A-Za-z0-9_@.-]+)*", pkgs.instLangs):
        langs = pkgs.instLangs
        raise ComposerError(f"kickstart {section}: %packages --instLangs={langs!r}: give languages separated by ':' (en_US:de)")
    return LiveKickstart(
        ks,
        system,
        ignore_missing,
        tuple(_not_yet(handler)),
        request,
        bool(pkgs.excludeDocs),
        not pkgs.excludeWeakdeps,
        pkgs.instLangs,
    )


def _not_yet(handler: Any) -> list[str]:
    """%packages and repo options an image install acts on and composer does not yet."""
    pkgs = handler.packages
    found: list[str] = []
    if getattr(pkgs, "default", False):
        found.append("%packages --default (the product's default environment: name it with @^ID)")
    return found


def _load(path: Path) -> tuple[KickstartInput, Any, list[Path]]:
    _check_is_file(path)
    files = _include_files(path)
    handler = read_kickstart(path)
    # Checked in this order, so the first error reported stays the same: sources,
    # bootloader arguments, then %packages lines.
    sources = _read_sources(handler, files)
    pkgs = handler.packages
    kernel_args = _kernel_args(handler, files)
    _check_package_lines(pkgs, files)
    unused = _unused_commands(handler) + sources.unused + _unused_groups(pkgs)
    unused = _with_unused_scripts(handler, unused)
    ks = KickstartInput(
        path,
        tuple(sources.urls),
        tuple(sources.mirrorlists),
        tuple(pkgs.packageList),
        tuple(pkgs.excludedList),
        kernel_args,
        tuple(unused),
        tuple(sources.options),
    )
    return ks, handler, files


def report_unused(ks: KickstartInput) -> None:
    if ks.unused:
        info(f"kickstart {ks.path}: not used by composer: {', '.join(ks.unused)}")


def apply_kickstart(cfg: Config, ks: KickstartInput) -> Config:
    """cfg with the kickstart's sources and package changes added (command line first)."""

    def merged(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a + b))

    return dataclasses.replace(
        cfg,
        sources=merged(cfg.sources, ks.sources),
        mirrorlists=merged(cfg.mirrorlists, ks.mirrorlists),
        installpkgs=merged(cfg.installpkgs, ks.installpkgs),
        excludepkgs=merged(cfg.excludepkgs, ks.excludepkgs),
        repo_options=cfg.repo_options + ks.repo_options,
    )


def add_ks_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ks",
        type=Path,
        default=None,
        metavar="FILE",
        help="kickstart: url/repo add sources, %%packages adds/excludes packages, bootloader --append adds kernel arguments",
    )


def config_with_kickstart(cfg: Config, ks_path: Path | None) -> tuple[Config, KickstartInput | None]:
    """For a command's `--ks`: the config with the kickstart applied (and its report)."""
    if ks_path is None:
        return cfg, None
    ks = load_kickstart(ks_path)
    report_unused(ks)
    if ks.sources or ks.installpkgs or ks.excludepkgs or ks.kernel_args:
        info(
            f"kickstart {ks.path}: {len(ks.sources)} sources, {len(ks.installpkgs)} packages added, "
            f"{len(ks.excludepkgs)} excluded, kernel arguments: {' '.join(ks.kernel_args) or '(none)'}"
        )
    return apply_kickstart(cfg, ks), ks
