"""The dnf stage: populate an install tree with the dnf command line.

Templates decide which packages go in (installpkg ... run_pkg_transaction); this module
only turns their requests into dnf transactions. dnf runs on the host with
--installroot, so the tree needs no package manager of its own.

Both command lines are spoken: dnf 4 (Debian 12, Fedora up to 40) and dnf5 (Fedora 41+,
where `dnf` is dnf5). A host without the wanted dnf can lend one from a root directory
(--dnf-root, e.g. Debian unstable's dnf5 made by scripts/dnf5-root): dnf and rpm then run
inside that root under bubblewrap, with the tree, the work directory, the package cache and
local repositories bound in at their own paths, so every path means the same in and out.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import fnmatch
import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import ParseResult, unquote, urlparse

from composer.config import Config, DnfChoice
from composer.run import MASK, CommandError, ComposerError, debug, info, redact, register_secret, run
from composer.userns import inside as userns_inside

# Where rpm keeps its database inside the tree. Debian's rpm defaults to ~/.rpmdb,
# so every rpm/dnf call gets a private HOME whose .rpmmacros says this.
RPMDB = "/usr/lib/sysimage/rpm"
# _netsharedpath: rpm leaves /proc alone. During a transaction it is a procfs mount (for
# scriptlets) that only the host's real root may chown, which rpm would try and fail in
# composer's user namespace (composer.userns); _tidy gives the directory its packaged
# owner and mode afterwards, as root and as an ordinary user alike.
RPMMACROS = f"%_dbpath {RPMDB}\n%_netsharedpath /proc\n"
# Tree paths a dnf run itself may create (mount points for scriptlets, libdnf's module
# state, dnf5's lock directory): kept only as a package makes them.
DNF_MADE = ("dev", "proc", "sys", "etc", "etc/dnf", "etc/dnf/modules.d", "run", "run/dnf")


@dataclasses.dataclass(frozen=True)
class DnfConfig:
    releasever: str
    arch: str
    sources: tuple[str, ...] = ()      # base URLs of repositories (--source)
    repofiles: tuple[Path, ...] = ()   # .repo files (--repo)
    excludepkgs: tuple[str, ...] = ()
    cachedir: Path = Path("/var/cache/composer/dnf")
    nogpgcheck: bool = False
    nodocs: bool = True
    dnf: DnfChoice = DnfChoice.AUTO
    root: Path | None = None  # where dnf and rpm come from (None: the host)
    mirrorlists: tuple[str, ...] = ()  # mirrorlist URLs, each a repository (lorax's -m)
    proxy: str | None = None           # for every repository
    sslverify: bool = True
    enablerepos: tuple[str, ...] = ()  # repository ids or globs of the .repo files, enabled
    disablerepos: tuple[str, ...] = ()  # ... then disabled (lorax's order)
    logdir: Path | None = None  # where dnf writes its logs (None: the work directory's dnf-log)


# dnf's own log files (dnf 4: dnf.log, dnf.librepo.log, dnf.rpm.log, hawkey.log; dnf5: dnf5.log).
_DNF_LOGS = ("dnf", "hawkey")
# Environment variable naming a --dnf-root when the option is not given.
DNF_ROOT_ENV = "COMPOSER_DNF_ROOT"
# Program names to try, in order, for each choice (a Fedora 41+ `dnf` is dnf5, `dnf4` and
# `dnf-3` are dnf 4 wherever they exist).
_CANDIDATES = {
    DnfChoice.AUTO: ("dnf", "dnf5", "dnf-3"),
    DnfChoice.DNF4: ("dnf4", "dnf-3", "dnf"),
    DnfChoice.DNF5: ("dnf5", "dnf"),
}
# Top-level entries of a --dnf-root the sandbox shows (read-only); everything else is the
# host's paths bound in, or empty.
_ROOT_DIRS = ("usr", "etc")


def dnf_config(cfg: Config) -> DnfConfig:
    """What a build's configuration asks of dnf."""
    return DnfConfig(
        releasever=cfg.version, arch=cfg.arch, sources=cfg.sources, repofiles=cfg.repofiles,
        excludepkgs=cfg.excludepkgs, cachedir=cfg.cachedir / "dnf", nogpgcheck=cfg.nogpgcheck,
        dnf=cfg.dnf, root=cfg.dnf_root, mirrorlists=cfg.mirrorlists, proxy=cfg.proxy, sslverify=cfg.sslverify,
        enablerepos=cfg.enablerepos, disablerepos=cfg.disablerepos, logdir=cfg.dnf_logdir,
    )


@dataclasses.dataclass(frozen=True)
class DnfProgram:
    """The dnf that fills trees: its command line's major version and where it runs."""

    flavor: DnfChoice       # DNF4 or DNF5
    command: str            # as found on PATH (the host's or the root's)
    version: str            # dnf's own version line
    rpm_version: str        # the rpm that writes the database beside it
    root: Path | None = None

    def identity(self) -> str:
        """What decides the tree's bytes (for the tree cache key): not where the root lies."""
        return f"{self.flavor} {self.version}; {self.rpm_version}"

    def describe(self) -> str:
        return f"{self.flavor} ({self.version})" + (f" from --dnf-root {self.root}" if self.root else "")


def _root_sandbox(root: Path, rw: Sequence[Path] = (), ro: Sequence[Path] = ()) -> list[str]:
    """bwrap arguments running a program of `root` with host paths bound in at their own places.

    The root's /usr and /etc are shown read-only over an empty root (a tmpfs), so bwrap can
    make mount points for host paths anywhere else (/var/tmp/..., /var/cache/...).
    """
    argv = ["bwrap", "--tmpfs", "/"]
    for name in sorted(os.listdir(root)):
        path = root / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{name}"]   # usrmerge: /bin -> usr/bin
        elif name in _ROOT_DIRS:
            argv += ["--ro-bind", str(path), f"/{name}"]
    for host in ("/etc/resolv.conf", "/etc/hosts"):
        # For remote repositories; the root has (empty) files to bind them on.
        if os.path.isfile(host) and (root / host.lstrip("/")).is_file():
            argv += ["--ro-bind", host, host]
    argv += ["--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys", "--tmpfs", "/tmp",
             "--dir", "/var/tmp", "--dir", "/run"]
    for flag, src, dest in _binds(rw, ro):
        if any(dest == Path("/", d) or dest.is_relative_to(Path("/", d)) for d in _ROOT_DIRS):
            raise ComposerError(f"{dest}: lies in /{dest.parts[1]}, which --dnf-root {root} provides itself; "
                                "move it elsewhere (e.g. below /var or /srv)")
        if src.exists():
            argv += [flag, str(src), str(dest)]
    return argv


def _binds(rw: Sequence[Path], ro: Sequence[Path]) -> list[tuple[str, Path, Path]]:
    """(bwrap flag, host path, place in the sandbox) for the paths: each at its
    resolved place, and at the place given too when that goes through a link (dnf is told
    the given path: a repository or cache reached through a link), parents before
    children so that a child's bind is not hidden by its parent's."""
    binds: dict[Path, tuple[str, Path]] = {}
    for flag, paths in (("--bind", rw), ("--ro-bind", ro)):
        for p in paths:
            real = p.resolve()
            for dest in (real, Path(os.path.abspath(p))):
                binds.setdefault(dest, (flag, real))
    return [(flag, src, dest) for dest, (flag, src) in sorted(binds.items(), key=lambda b: len(b[0].parts))]


def _host_sandbox(rw: Sequence[Path] = (), ro: Sequence[Path] = ()) -> list[str]:
    """bwrap arguments running the host's dnf with a /tmp of its own, a tmpfs that dies with
    it: libdnf makes /tmp/tmpdir.XXXXXX whatever TMPDIR says, and a build stopped while it
    exists would leave it. Host paths below /tmp are bound back in at their own places."""
    argv = ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/tmp"]
    for flag, src, dest in _binds(rw, ro):
        if dest.is_relative_to("/tmp") and dest != Path("/tmp") and src.exists():
            argv += [flag, str(src), str(dest)]
    return argv


def _version_line(argv: list[str]) -> str:
    try:
        out = run(argv, capture=True, quiet=True).stdout.decode(errors="replace")
    except CommandError as e:
        raise ComposerError(f"{' '.join(argv[-2:])} does not run: {_dnf_reason(e.stderr)}") from None
    return (out.strip().splitlines() or ["unknown"])[0].strip()


@functools.cache
def find_dnf(choice: DnfChoice = DnfChoice.AUTO, root: Path | None = None) -> DnfProgram:
    """The dnf to use: the host's (or root's) `dnf` for auto, else the major version asked for."""
    option = f"--dnf {choice}" if choice is not DnfChoice.AUTO else "dnf"
    if root is not None:
        if not (root / "usr" / "bin").is_dir():
            raise ComposerError(f"--dnf-root {root}: not a root directory (no usr/bin; scripts/dnf5-root makes one)")
        prefix = _root_sandbox(root) + ["--"]
        found = [n for n in _CANDIDATES[choice] if (root / "usr" / "bin" / n).exists()]
        where = f"in --dnf-root {root}"
    else:
        # In composer's user namespace the host's /var/log is not root's to write: dnf 4's
        # --version (which ignores --setopt=logdir) runs over a throwaway /var there.
        prefix = _root_sandbox(Path("/")) + ["--dir", "/var/log", "--"] if userns_inside() else []
        found = [n for n in _CANDIDATES[choice] if shutil.which(n)]
        where = "on this host"
    for name in found:
        line = _version_line(prefix + [name, "--version"])
        # dnf5: "dnf5 version 5.4.6.0"; dnf 4: "4.14.0".
        flavor = DnfChoice.DNF5 if line.startswith(("dnf5", "5.")) else DnfChoice.DNF4
        if choice is DnfChoice.AUTO or flavor is choice:
            rpm = _version_line(prefix + ["rpm", "--version"]) if (
                root is None or (root / "usr/bin/rpm").exists()) else ""
            if not rpm:
                raise ComposerError(f"--dnf-root {root}: has dnf but no rpm")
            program = DnfProgram(flavor, name, line, rpm, root)
            debug(f"dnf: {program.describe()}, {rpm}")
            return program
    if choice is DnfChoice.DNF5:
        hint = ("give --dnf-root DIR (or COMPOSER_DNF_ROOT), a root with dnf5 in it (scripts/dnf5-root makes "
                "Debian unstable's), or install dnf5")
    elif root is not None:
        hint = "give a root with dnf in it, or leave out --dnf-root to use the host's"
    else:
        hint = "install dnf (apt-get install dnf), or give --dnf-root DIR, a root with dnf in it"
    what = {DnfChoice.AUTO: "no dnf", DnfChoice.DNF4: "no dnf 4", DnfChoice.DNF5: "no dnf5"}[choice]
    raise ComposerError(f"{option}: {what} {where}: {hint}")


def _repo_id(url: str, index: int) -> str:
    tail = re.sub(r"[^A-Za-z0-9]+", "-", urlparse(url).path).strip("-")[-24:] or "repo"
    return f"source{index}-{tail}"


PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")


def proxy_url(text: str) -> str:
    """A proxy as given on a command line: 'host:port' is http, as libcurl takes it. Its
    password is a secret from here on."""
    url = text if "://" in text else f"http://{text}"
    split_userinfo(url)
    return url


def check_proxy(url: str, option: str = "--proxy") -> None:
    parsed = urlparse(url)
    if parsed.scheme not in PROXY_SCHEMES or not parsed.netloc or any(c.isspace() or not c.isprintable() for c in url):
        raise ComposerError(f"{option} {url!r}: not a proxy URL (use e.g. http://proxy.example.com:3128)")


def _mirror_id(url: str, index: int) -> str:
    return "mirror" + _repo_id(url, index).removeprefix("source")


def mirrorlist_urls(url: str) -> list[str]:
    """The base URLs a local mirrorlist file lists (remote ones are dnf's to read)."""
    if not url.startswith("file:"):
        return []
    try:
        text = Path(urlparse(url).path).read_text(errors="replace")
    except OSError as e:
        raise ComposerError(f"--mirrorlist {url}: cannot read it: {e.strerror}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def check_source(url: str, option: str = "--source") -> None:
    """Fail early, with the option (or kickstart file:line) named, on a source that cannot work."""
    parsed = check_url(url, option)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        repomd = path / "repodata" / "repomd.xml"
        if not repomd.is_file():
            raise ComposerError(f"{option} {url}: no repository there ({path}/repodata/repomd.xml is missing)")
        import xml.etree.ElementTree as ET

        # A local repository can be checked now; dnf would only say so after loading the rest.
        try:
            root = ET.parse(repomd).getroot()
        except (ET.ParseError, OSError) as e:
            raise ComposerError(f"{option} {url}: malformed repository: {repomd}: {e}") from None
        if root.tag.rpartition("}")[2] != "repomd":
            raise ComposerError(f"{option} {url}: malformed repository: {repomd} is not a repomd document")


def check_url(url: str, option: str) -> ParseResult:
    """A URL dnf can fetch from (file, http, https, ftp), as urlparse parts."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ComposerError(f"{option} {url!r}: not a URL ({e})") from None
    if parsed.scheme not in ("file", "http", "https", "ftp") or (parsed.scheme != "file" and not parsed.netloc):
        raise ComposerError(f"{option} {url}: not a URL (use file:///path, http:// or https://)")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ComposerError(f"{option} {url!r}: a URL holds no white space or control characters")
    return parsed


_URL_KEYS = ("baseurl", "mirrorlist", "metalink")
_URL_SCHEMES = ("file", "http", "https", "ftp")
# dnf's repository options that hold credentials: written only into the 0600 files dnf
# reads while it runs (masked otherwise), never onto a command line or into a log. The
# passwords are also secrets (run.register_secret) wherever composer prints: a user name
# ("admin") is too common a word to mask in every line.
CREDENTIAL_KEYS = ("username", "password", "proxy_username", "proxy_password")
SECRET_KEYS = ("password", "proxy_password")
# How packages are fetched, not what they are: not part of a tree's cache key.
_FETCH_KEYS = ("proxy", "proxy_auth_method", "sslverify", *CREDENTIAL_KEYS)
_AUTHORITY = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)([^/?#]*)")


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """url without its user:password@, and the user and password (percent-decoded; None
    where not given). The password is a secret from now on, in either spelling."""
    m = _AUTHORITY.match(url)
    if not m or "@" not in m.group(2):
        return url, None, None
    # The host follows the last "@" (as urlsplit reads it): a password may hold one.
    userinfo, _, host = m.group(2).rpartition("@")
    user, sep, password = userinfo.partition(":")
    if sep:
        register_secret(password)
        register_secret(unquote(password))
    return m.group(1) + host + url[m.end():], unquote(user), unquote(password) if sep else None


@dataclasses.dataclass(frozen=True)
class RepoSection:
    """One [section] of a .repo file: its options in order (names as written), and
    the line each option is on (for messages)."""

    name: str
    options: tuple[tuple[str, str], ...]
    lines: tuple[tuple[str, int], ...] = ()

    def get(self, key: str) -> str:
        return next((v.strip() for k, v in self.options if k.lower() == key), "")

    def line_of(self, key: str) -> int | None:
        return next((n for k, n in self.lines if k.lower() == key), None)


def read_repofile(path: Path) -> list[RepoSection]:
    """A dnf .repo file's sections: the one reading every check and use of --repo shares.
    Its passwords are secrets (masked in all composer prints) from here on."""
    if not path.exists():
        raise ComposerError(f"--repo {path}: no such file")
    if not path.is_file():
        raise ComposerError(f"--repo {path}: not a regular file (give a dnf .repo file)")
    parser = configparser.ConfigParser(interpolation=None, strict=False, default_section="\0none")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # dnf's option names as written
    try:
        text = path.read_text(errors="replace")
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as e:
        raise ComposerError(f"--repo {path}:{e.lineno}: not a .repo file: {e.line.strip()!r} before any [section]") from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]  # line is repr()'d by configparser
        raise ComposerError(f"--repo {path}:{lineno}: not a .repo file: cannot parse {line}") from None
    except configparser.Error as e:
        err_line = getattr(e, "lineno", None)
        at = f"{path}:{err_line}" if err_line else str(path)
        raise ComposerError(f"--repo {at}: not a .repo file: {e.message}") from None
    except OSError as e:
        raise ComposerError(f"--repo {path}: {e.strerror or e}") from None
    lines: dict[str, list[tuple[str, int]]] = {}
    section = None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("["):
            section = s[1:].partition("]")[0].strip()
        elif section is not None and (m := re.match(r"([^=:\s][^=:]*?)\s*[=:]", line)):
            lines.setdefault(section, []).append((m.group(1), n))
    sections = [RepoSection(name, tuple(parser.items(name)), tuple(lines.get(name, ()))) for name in parser.sections()]
    for sec in sections:
        for key in SECRET_KEYS:
            register_secret(sec.get(key))
        for key in (*_URL_KEYS, "proxy"):
            for url in re.split(r"[\s,]+", sec.get(key)):
                split_userinfo(url)
    return sections


def check_repofile(path: Path) -> None:
    """A .repo file dnf can use: ini sections, each with a way to reach its packages,
    every URL a URL (librepo asserts on a garbage metalink and leaves its locks)."""
    sections = read_repofile(path)
    if not sections:
        raise ComposerError(f"--repo {path}: no [repository] section")
    for sec in sections:
        name = sec.name
        if not any(sec.get(key) for key in _URL_KEYS):
            raise ComposerError(f"--repo {path}: [{name}] has no baseurl, mirrorlist or metalink")
        for key in _URL_KEYS:
            value = sec.get(key)
            urls = re.split(r"[\s,]+", value) if key == "baseurl" else [value]
            for url in urls:
                if not url:
                    continue
                try:
                    parsed = urlparse(url)
                    parsed.port  # noqa: B018 - raises ValueError on a bad port
                except ValueError:
                    parsed = urlparse("")
                if parsed.scheme not in _URL_SCHEMES or (parsed.scheme != "file" and not parsed.netloc) \
                        or any(not c.isprintable() or c.isspace() for c in url):
                    line = sec.line_of(key)
                    where = f"{path}:{line}" if line else str(path)
                    raise ComposerError(f"--repo {where}: [{name}] {key} {url!r} is not a URL "
                                        "(file:///path, http://, https://)")


def repofile_paths(path: Path) -> list[Path]:
    """Local directories a .repo file's baseurls name (best effort: check_repofile judges the file)."""
    try:
        sections = read_repofile(path)
    except ComposerError:
        return []
    found = []
    for sec in sections:
        for url in re.split(r"[\s,]+", sec.get("baseurl")):
            parsed = _urlparse(url)
            if parsed.scheme == "file" and parsed.path:
                found.append(Path(unquote(parsed.path)))
    return found


def _urlparse(url: str) -> ParseResult:
    try:
        return urlparse(url)
    except ValueError:
        return urlparse("")


@dataclasses.dataclass(frozen=True)
class Repository:
    """One repository dnf reads, as composer writes it into dnf's reposdir: from a
    --source, a --mirrorlist or a section of a --repo file. Credentials are options of
    their own (username=, password=, ...), never part of a URL: librepo logs the URLs it
    fetches, and dnf logs and records its command line."""

    id: str
    origin: str  # how messages name it ("--source URL"; a URL's credentials are masked when shown)
    options: tuple[tuple[str, str], ...]

    def text(self, *, secrets: bool) -> str:
        """The [section] for dnf (secrets: with the credentials, else with them masked)."""
        out = [f"[{self.id}]"]
        for key, value in self.options:
            if not secrets and key.lower() in CREDENTIAL_KEYS:
                value = MASK
            out.append(f"{key}={value.strip()}".replace("\n", "\n  "))  # continuation lines, as dnf reads them
        return "\n".join(out) + "\n"

    def shaping(self) -> list[str]:
        """Its options that decide what dnf installs (for the tree cache's key)."""
        return [f"repo {self.id}: {k}={v.strip()}" for k, v in self.options if k.lower() not in _FETCH_KEYS]


def _with_credentials(options: list[tuple[str, str]], proxy: str | None) -> list[tuple[str, str]]:
    """options with the credentials of its URLs (and of `proxy`, for a section without a
    proxy of its own) moved into options of their own."""
    have = {k.lower() for k, _ in options}
    out: list[tuple[str, str]] = []
    extra: dict[str, str] = {}
    if proxy and "proxy" not in have:
        options = [*options, ("proxy", proxy)]
    for key, value in options:
        if key.lower() in (*_URL_KEYS, "proxy"):
            prefix = "proxy_" if key.lower() == "proxy" else ""
            urls = []
            for url in re.split(r"([\s,]+)", value):
                bare, user, password = split_userinfo(url)
                urls.append(bare)
                if user is not None and f"{prefix}username" not in have:
                    extra.setdefault(f"{prefix}username", user)
                    if password is not None:
                        extra.setdefault(f"{prefix}password", password)
            value = "".join(urls)
        out.append((key, value))
    return out + list(extra.items())


SOURCES_REPO = "composer-sources.repo"


def repositories(config: DnfConfig) -> list[tuple[str, list[Repository]]]:
    """The repositories of a build, by the file composer writes each into (reposdir)."""
    gpgcheck = "0" if config.nogpgcheck else "1"
    sources = []
    for i, url in enumerate(config.sources):
        opts = [("name", _repo_id(url, i)), ("baseurl", url), ("enabled", "1"), ("gpgcheck", gpgcheck),
                ("skip_if_unavailable", "False")]
        if url.startswith("file:"):
            # A local repository may be rebuilt between runs: never trust cached metadata.
            opts.append(("metadata_expire", "0"))
        sources.append(Repository(_repo_id(url, i), f"--source {url}", tuple(_with_credentials(opts, config.proxy))))
    mirrors = []
    for i, url in enumerate(config.mirrorlists):
        opts = [("name", _mirror_id(url, i)), ("mirrorlist", url), ("enabled", "1"), ("gpgcheck", gpgcheck),
                ("skip_if_unavailable", "False"), ("metadata_expire", "0")]
        mirrors.append(Repository(_mirror_id(url, i), f"--mirrorlist {url}",
                                  tuple(_with_credentials(opts, config.proxy))))
    files = [(SOURCES_REPO, sources), ("composer-mirrors.repo", mirrors)]
    for i, f in enumerate(config.repofiles):
        repos = [Repository(sec.name, f"--repo {f} [{sec.name}]",
                            tuple(_with_credentials(list(sec.options), config.proxy if sec.name != "main" else None)))
                 for sec in read_repofile(f)]
        files.append((f"repo{i}-{f.name.removesuffix('.repo')}.repo", repos))
    return [(name, repos) for name, repos in files if repos]


@dataclasses.dataclass(frozen=True)
class RpmFile:
    """What the rpm database says one path of the tree must be."""

    path: str
    kind: str    # d f l c b p s (as treecheck.Node.kind)
    perm: int    # permission bits, setuid/setgid/sticky included
    user: str
    group: str
    target: str  # symlink target
    package: str


_KINDS = {0o040000: "d", 0o100000: "f", 0o120000: "l", 0o020000: "c", 0o060000: "b", 0o010000: "p", 0o140000: "s"}
# rpm's file flags and states that mean "need not be on disk as listed".
_RPMFILE_GHOST = 1 << 6
_RPMFILE_STATE_NORMAL = 0
# Packaged but left alone by rpm (RPMMACROS' _netsharedpath: /proc): it is still the package's.
_RPMFILE_STATE_NETSHARED = 3
_RPMFILE_STATES_KEPT = (str(_RPMFILE_STATE_NORMAL), str(_RPMFILE_STATE_NETSHARED))


def tree_ids(tree: Path) -> tuple[dict[str, int], dict[str, int]]:
    """User and group names of the tree's /etc/passwd and /etc/group (rpm resolves names there)."""
    def read(name: str) -> dict[str, int]:
        ids: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (tree / "etc" / name).read_text(errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    ids.setdefault(fields[0], int(fields[2]))
        return ids
    return read("passwd"), read("group")


def check_config(config: DnfConfig) -> None:
    """Fail early, naming the option, on package sources and repository options that cannot work."""
    if not config.sources and not config.repofiles and not config.mirrorlists:
        raise ComposerError("no package source: give --source URL or --repo FILE")
    for url in config.sources:
        check_source(url)
    for url in config.mirrorlists:
        check_url(url, "--mirrorlist")
        bases = mirrorlist_urls(url)
        if url.startswith("file:") and not bases:
            raise ComposerError(f"--mirrorlist {url}: lists no repository (one base URL per line)")
        for base in bases:
            check_source(base, f"--mirrorlist {url}: lists")
    for f in config.repofiles:
        check_repofile(f)
    if config.proxy is not None:
        check_proxy(config.proxy)
    for option, globs in (("--enablerepo", config.enablerepos), ("--disablerepo", config.disablerepos)):
        for g in globs:
            if not g or any(c.isspace() or c in ",=" or not c.isprintable() for c in g):
                raise ComposerError(f"{option} {g!r}: not a repository id or glob")


class DnfSession:
    """One install tree and the dnf transactions that fill it (a templates.PackageManager)."""

    def __init__(self, tree: Path, config: DnfConfig, workdir: Path) -> None:
        self.tree = tree
        self.config = config
        self.workdir = workdir
        self._to_install: list[str] = []
        self._to_remove: list[str] = []
        self._available: list[str] | None = None
        check_config(config)
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".rpmmacros").write_text(RPMMACROS)
        # Repository definitions, with their credentials only while dnf runs (_credentials).
        self.reposdir = workdir / "repos.d"
        self.reposdir.mkdir(mode=0o700, exist_ok=True)
        self.repositories = repositories(config)
        self._write_repos(secrets=False)
        for r in (r for _, repos in self.repositories for r in repos):
            debug(f"dnf: repository {r.id} from {r.origin}")  # debug masks a URL's credentials
        self.logdir = config.logdir or workdir / "dnf-log"
        self.logdir.mkdir(parents=True, exist_ok=True)
        (workdir / "dnf-state").mkdir(exist_ok=True)
        tree.mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(self.home), "LC_ALL": "C.UTF-8"}
        self._program: DnfProgram | None = None

    def _write_repos(self, *, secrets: bool) -> None:
        """reposdir's files, 0600 (secrets: the passwords in, else masked, as a kept work
        directory shows them)."""
        for name, repos in self.repositories:
            fd = os.open(self.reposdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write("\n".join(r.text(secrets=secrets) for r in repos))

    @contextlib.contextmanager
    def _credentials(self) -> Iterator[None]:
        """The repositories' credentials in reposdir while dnf runs, and only then."""
        self._write_repos(secrets=True)
        try:
            yield
        finally:
            self._write_repos(secrets=False)
            self._scrub_logs()

    def _scrub_logs(self) -> None:
        """dnf's logs with every secret composer knows masked: a credential dnf was not given
        (a mirror list's URLs) must not stay in a log others read."""
        for log in self.logdir.glob("*.log"):
            if log.name.startswith(_DNF_LOGS) and log.is_file() and not log.is_symlink():
                text = log.read_text(errors="surrogateescape")
                clean = redact(text)
                if clean != text:
                    log.write_text(clean, errors="surrogateescape")

    @property
    def program(self) -> DnfProgram:
        """The dnf this session runs (found on first use: a session may never run dnf)."""
        if self._program is None:
            self._program = find_dnf(self.config.dnf, self.config.root)
            info(f"dnf: {self._program.describe()}")
        return self._program

    def _local_paths(self) -> list[Path]:
        """Host paths dnf reads besides the work tree: local repositories and keys."""
        paths = [Path(urlparse(u).path) for m in self.config.mirrorlists for u in mirrorlist_urls(m)
                 if u.startswith("file:")]
        for repo in (r for _, repos in self.repositories for r in repos):
            for key, value in repo.options:
                if key.lower() in (*_URL_KEYS, "gpgkey"):
                    for url in re.split(r"[\s,]+", value.strip()):
                        if url.startswith("file:"):
                            path = Path(urlparse(url).path)
                            paths.append(path if key.lower() == "baseurl" else path.parent)
        return paths

    def _sandbox(self, transaction: bool, private_tmp: bool = True) -> list[str]:
        """What runs dnf or rpm: bwrap over the host (private_tmp: dnf's) or into --dnf-root, or
        nothing (the host's rpm); scriptlets get /dev, /proc and /sys in the tree during a transaction."""
        t = str(self.tree)
        prefix: list[str] = []
        root = self.program.root
        rw = [self.workdir, self.tree, self.config.cachedir, self.logdir]
        if root is not None:
            prefix = _root_sandbox(root, rw=rw, ro=self._local_paths())
        elif private_tmp:
            prefix = _host_sandbox(rw=rw, ro=self._local_paths())
        elif transaction:
            prefix = ["bwrap", "--dev-bind", "/", "/"]
        if transaction:
            # The mounts live in a private namespace that dies with dnf, so none can outlive it.
            prefix += ["--dev", f"{t}/dev", "--proc", f"{t}/proc",
                       # rpm sets the mode of a packaged /sys: on a tmpfs, never on the host's
                       # sysfs; its contents are bound read-only below it.
                       "--tmpfs", f"{t}/sys"]
            for entry in sorted(os.listdir("/sys")):
                prefix += ["--ro-bind", f"/sys/{entry}", f"{t}/sys/{entry}"]
        if prefix:
            prefix += ["--unshare-pid", "--die-with-parent", "--"]
        return prefix

    # -- dnf command line -------------------------------------------------------
    def _dnf_argv(self) -> list[str]:
        c = self.config
        c.cachedir.mkdir(parents=True, exist_ok=True)
        program = self.program
        # Paths that reach the host whether or not dnf puts the installroot in front (see
        # _host_path): dnf 4 prefixes cachedir and logdir; dnf5 prefixes its own state
        # (install reasons, history) and the lock in persistdir, and takes the rest as given.
        # persistdir (dnf 4's history) is not prefixed by dnf 4: a host path as it is.
        state = self.workdir / "dnf-state"
        paths = [f"--setopt=cachedir={self._host_path(c.cachedir)}",
                 f"--setopt=logdir={self._host_path(self.logdir)}",
                 f"--setopt=persistdir={self._host_path(state) if program.flavor is DnfChoice.DNF5 else state}"]
        if program.flavor is DnfChoice.DNF5:
            paths += [f"--setopt={o}={self._host_path(state)}" for o in ("system_state_dir", "transaction_history_dir")]
            paths.append(f"--setopt=system_cachedir={self._host_path(c.cachedir)}")
        argv = [
            program.command, "-y", "--quiet",
            f"--installroot={self.tree}",
            f"--releasever={c.releasever}",
            f"--forcearch={c.arch}",
            "--noplugins",
            f"--setopt=reposdir={self.reposdir}",
            *paths,
            "--setopt=keepcache=True",
            "--setopt=install_weak_deps=False",
            "--setopt=check_config_file_age=False",
            # A repository that cannot be read is an error, not an empty repository
            # (else a typo in a URL surfaces as "no package matches").
            "--setopt=skip_if_unavailable=False",
        ]
        if c.nodocs:
            argv.append("--setopt=tsflags=nodocs")
        if c.nogpgcheck:
            argv.append("--nogpgcheck")
        for pattern in c.excludepkgs:
            argv.append(f"--exclude={pattern}")
        # Enabled first, then disabled, as lorax applies them; dnf5 spells the options its way.
        five = program.flavor is DnfChoice.DNF5
        argv += [f"--{'enable-repo' if five else 'enablerepo'}={g}" for g in c.enablerepos]
        argv += [f"--{'disable-repo' if five else 'disablerepo'}={g}" for g in c.disablerepos]
        if c.disablerepos:
            # The --source repositories are not the .repo files' to switch off (as when they
            # were dnf's --repofrompath, which nothing disables).
            argv += [f"--{'enable-repo' if five else 'enablerepo'}={r.id}" for r in self._sources()]
        # How packages are fetched, not which: left out of the cache key (shaping_options).
        # The proxy and the credentials are in the repositories' files (_credentials).
        if not c.sslverify:
            argv.append("--setopt=sslverify=False")
        return argv

    def shaping_options(self) -> list[str]:
        """dnf and the options that decide what lands in the tree, without work paths (cache keys)."""
        local = ("--installroot=", "--setopt=reposdir=") + tuple(
            f"--setopt={o}=" for o in ("cachedir", "system_cachedir", "logdir", "persistdir", "system_state_dir",
                                       "transaction_history_dir", "sslverify"))
        # Which dnf (and rpm) it is, not where it lives: dnf 4 and dnf5 trees differ (rpm database).
        repos = [line for _, rs in self.repositories for r in rs for line in r.shaping()]
        return [self.program.identity()] + [a for a in self._dnf_argv()[1:] if not a.startswith(local)] + repos

    def _sources(self) -> list[Repository]:
        return next((repos for name, repos in self.repositories if name == SOURCES_REPO), [])

    def _rpm(self, *args: str) -> str:
        # The rpm beside dnf: the database it wrote is the one it reads best.
        argv = ["rpm", f"--root={self.tree}", f"--dbpath={RPMDB}", *args]
        proc = run(self._sandbox(transaction=False, private_tmp=False) + argv, env=self.env, capture=True)
        return proc.stdout.decode(errors="replace")

    def _host_path(self, host: Path) -> str:
        """A value for dnf's cachedir or logdir that reaches `host` from the tree.

        dnf 4 puts the installroot in front of these, whatever they are set to; one `..`
        per component of the tree's path leads back to /, so the package cache, logs and
        history stay on the host and nothing is created in the tree for them.
        """
        depth = len(self.tree.resolve().parts) - 1
        return "/" + "../" * depth + str(host.resolve()).lstrip("/")

    @contextlib.contextmanager
    def _tidy(self) -> Iterator[None]:
        """Put back what dnf itself makes in the tree.

        libdnf creates /etc/dnf/modules.d under the installroot, and bubblewrap the mount
        points of /dev, /proc and /sys. A path made that way gets rpm's mode and owner if a
        package owns it (rpm's chmod of a mount point went to the mount on top), else it is
        removed again (it is empty: the mounts kept everything off it). After a failed or
        interrupted run the tree is thrown away: nothing to put back, no rpm to wait for.
        """
        made = [p for p in DNF_MADE if not os.path.lexists(self.tree / p)]
        yield
        made = [p for p in made if os.path.lexists(self.tree / p)]
        if made:
            owned = self.packaged_files() if (self.tree / RPMDB.lstrip("/")).is_dir() else {}
            users, groups = tree_ids(self.tree)
            for rel in sorted(made, key=lambda p: p.count("/"), reverse=True):
                path = self.tree / rel
                spec = owned.get(f"/{rel}", [None])[0]
                if spec is not None and spec.kind == "d" and path.is_dir() and not path.is_symlink():
                    os.chown(path, users.get(spec.user, 0), groups.get(spec.group, 0))
                    os.chmod(path, spec.perm)
                elif spec is None:
                    with contextlib.suppress(OSError):
                        path.rmdir()

    def _dnf(self, *args: str, capture: bool = False, transaction: bool = False) -> subprocess.CompletedProcess[bytes]:
        # Scriptlets get /dev, /proc and /sys as on a real system (see _sandbox).
        argv = self._dnf_argv() + list(args)
        with self._tidy(), self._credentials():
            return run(self._sandbox(transaction) + argv, env=self.env, capture=capture)

    # -- what the repositories offer ---------------------------------------------
    def available(self) -> list[str]:
        """Names of all packages the repositories offer (one metadata load, cached)."""
        if self._available is None:
            try:
                proc = self._dnf("repoquery", "--available", "--queryformat=%{name}\n", capture=True)
            except CommandError as e:
                raise ComposerError(self._repo_error(e.stderr)) from None
            self._available = sorted(set(proc.stdout.decode().split()))
            debug(f"{len(self._available)} package names available")
        return self._available

    def providers(self, capability: str) -> list[str]:
        """Names of the available packages that provide `capability` (lorax's branding asks
        who provides system-release)."""
        try:
            proc = self._dnf("repoquery", "--available", f"--whatprovides={capability}", "--queryformat=%{name}\n",
                             capture=True)
        except CommandError as e:
            raise ComposerError(self._repo_error(e.stderr)) from None
        return sorted(set(proc.stdout.decode().split()))

    def _repo_error(self, stderr: str) -> str:
        """dnf's complaint about a repository, naming the --source it came from."""
        reason = _dnf_reason(stderr)
        origins: dict[str, str] = {}
        for _, repos in self.repositories:
            for r in repos:
                origins.setdefault(r.id, r.origin)
        for rid, origin in origins.items():
            # dnf 4: "... for repo 'ID'"; dnf5: '... for repository "ID": ...'.
            for quoted in (f"'{rid}'", f'"{rid}"'):
                if quoted in reason:
                    reason = re.sub(r" for (repo|repository) " + re.escape(quoted), "", reason)
                    reason = re.sub(r"^Error: ", "", reason.replace(quoted, "it"))
                    return f"{origin}: cannot read the repository: {reason}"
        return f"cannot read the package repositories: {reason}"

    def _gpg_reason(self, stderr: str) -> str | None:
        """dnf's signature complaints ("Problem repository: [id]") as what is wrong and what to do."""
        if not re.search(r"\bGPG\b|not signed|public key", stderr):
            return None
        unsigned = self._an_unsigned_package()
        what = (f"package {unsigned} is not signed" if unsigned
                else "package signatures cannot be checked (no GPG key for the repository)")
        return (f"{what}: signature checks are on by default; give the repository's key (gpgkey= in a --repo "
                "file) or pass --nogpgcheck to trust the source as it is")

    def _an_unsigned_package(self) -> str | None:
        """The first package without a signature in a local --source (remote ones are not read)."""
        for url in self.config.sources:
            parsed = urlparse(url)
            if parsed.scheme != "file":
                continue
            for rpm in sorted(Path(parsed.path).rglob("*.rpm"))[:50]:
                try:
                    out = self._rpm("-qp", "--nosignature", "--queryformat=%{SIGPGP:pgpsig}%{RSAHEADER:pgpsig}", str(rpm))
                except CommandError:
                    continue
                if out.strip() == "(none)(none)":
                    return rpm.name
        return None

    def _match(self, patterns: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
        return {p: [n for n in names if fnmatch.fnmatchcase(n, p)] for p in patterns}

    # -- templates.PackageManager -------------------------------------------------
    def install(self, patterns: Sequence[str], *, required: bool = True, exclude: Sequence[str] = ()) -> None:
        names = self.available()
        for pattern in patterns:
            name, _, constraint = pattern.partition(" ")  # "NAME >= VER" (lorax's installpkg NAME>=VER)
            matches = self._match([name], names)[name]
            matches = [m for m in matches if not any(fnmatch.fnmatchcase(m, e) for e in exclude)]
            matches = [m for m in matches if not any(fnmatch.fnmatchcase(m, e) for e in self.config.excludepkgs)]
            if not matches:
                if required:
                    raise ComposerError(f"no package matches {pattern!r} in the repositories")
                debug(f"optional package {pattern!r} not available, skipped")
                continue
            self._to_install.extend(f"{m} {constraint}" if constraint else m for m in matches)

    def remove(self, patterns: Sequence[str]) -> None:
        self._to_remove.extend(patterns)

    def has_pending(self) -> bool:
        return bool(self._to_install or self._to_remove)

    def run_transaction(self) -> None:
        if self._to_install:
            pkgs = sorted(set(self._to_install))
            info(f"dnf: installing {len(pkgs)} requested packages and their dependencies")
            try:
                self._dnf("install", *pkgs, transaction=True)
            except CommandError as e:
                reason = self._gpg_reason(e.stderr) or _dnf_reason(e.stderr)
                raise ComposerError(f"dnf transaction failed: {reason}") from None
        if self._to_remove:
            try:
                self._dnf("remove", "--setopt=clean_requirements_on_remove=False", *sorted(set(self._to_remove)),
                          transaction=True)
            except CommandError as e:
                raise ComposerError(f"dnf remove failed: {_dnf_reason(e.stderr)}") from None
        self._to_install.clear()
        self._to_remove.clear()

    def installed(self) -> list[str]:
        return sorted(set(self._rpm("-qa", "--queryformat=%{NAME}\n").split()))

    def files_of(self, name: str) -> list[str]:
        out = self._rpm("-ql", name)
        return [line for line in out.splitlines() if line.startswith("/")]

    def packaged_files(self) -> dict[str, list[RpmFile]]:
        """Every path the rpm database says is installed, with its mode, owner and type.

        %ghost files and files rpm did not install (nodocs, other languages) are left out:
        they need not exist. A directory shared by several packages has several entries.
        """
        fmt = ("[%{FILENAMES}\\t%{FILEMODES}\\t%{FILEUSERNAME}\\t%{FILEGROUPNAME}\\t%{FILEFLAGS}"
               "\\t%{FILESTATES}\\t%{FILELINKTOS}\\t%{=NAME}\\n]")
        files: dict[str, list[RpmFile]] = {}
        for line in self._rpm("-qa", f"--queryformat={fmt}").splitlines():
            fields = line.split("\t")
            if len(fields) != 8 or not fields[0].startswith("/"):
                continue
            path, mode, user, group, flags, state, target, name = fields
            if not flags.isdigit() or int(flags) & _RPMFILE_GHOST or state not in _RPMFILE_STATES_KEPT:
                continue
            m = int(mode)
            files.setdefault(path, []).append(
                RpmFile(path, _KINDS.get(m & 0o170000, "?"), m & 0o7777, user, group, target, name))
        return files

    def nevras(self) -> list[str]:
        """name-epoch:version-release.arch of everything installed, for the manifest."""
        out = self._rpm("-qa", "--queryformat=%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n")
        return sorted(out.split())

    def metadata_digest(self) -> str:
        """A digest of the repositories' metadata (their repomd.xml), for keying caches.

        Local repositories are read in place. For remote ones (and .repo files) dnf
        first refreshes its cached copy (the metadata load a build does anyway), so a
        mirror that changed changes the digest, not only a changed URL.
        """
        h = hashlib.sha256()
        remote_ids: list[str] = []
        # Credentials say who fetches, not what: a changed password keeps the key.
        for i, url in enumerate(self.config.sources):
            h.update(split_userinfo(url)[0].encode() + b"\0")
            parsed = urlparse(url)
            if parsed.scheme == "file":
                h.update((Path(parsed.path) / "repodata" / "repomd.xml").read_bytes())
            else:
                remote_ids.append(_repo_id(url, i))
        for i, url in enumerate(self.config.mirrorlists):
            h.update(split_userinfo(url)[0].encode() + b"\0")
            bases = mirrorlist_urls(url)
            if bases and all(b.startswith("file:") for b in bases):
                for b in bases:
                    h.update((Path(urlparse(b).path) / "repodata" / "repomd.xml").read_bytes())
            else:
                remote_ids.append(_mirror_id(url, i))
        for r in (r for _, repos in self.repositories for r in repos if r.origin.startswith("--repo ")):
            h.update("\n".join(r.shaping()).encode() + b"\0")
            if r.id != "main":
                remote_ids.append(r.id)
        if remote_ids:
            self.available()
            for rid in remote_ids:
                # dnf keeps each repository's metadata in CACHEDIR/<id>-<16 hex digits>/.
                found = sorted(self.config.cachedir.glob(f"{glob.escape(rid)}-{'?' * 16}/repodata/repomd.xml"),
                               key=lambda p: p.stat().st_mtime)
                h.update(rid.encode() + b"\0" + (found[-1].read_bytes() if found else b"(no metadata)"))
        return h.hexdigest()


def _dnf_reason(stderr: str) -> str:
    """The lines of dnf's complaint that say what is wrong."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # rpm's transaction test: "At least 450MB more space needed on the /var/tmp/... filesystem."
    space = [ln for ln in lines if re.search(r"more space", ln, re.I)]
    if space:
        return f"not enough disk space for the tree: {space[-1]} (free some, or give --workdir elsewhere)"
    # Whole words only (not "libgpg-error0"), and not bare headings such as "Failed:".
    keep = [ln for ln in lines if not re.fullmatch(r"[\w ]+:", ln)
            and re.search(r"\b(error|problem|no match|nothing provides|conflicts?|cannot|failed)\b", ln, re.I)]
    text = " | ".join((keep or lines)[-4:])
    return text or "see the log for dnf's output"


def rpmdb_env(workdir: Path) -> dict[str, str]:
    """An environment whose rpm uses the tree's database path (for rpm calls outside a session)."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(RPMMACROS)
    return {"HOME": str(home)}


