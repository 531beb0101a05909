"""The dnf stage: populate an install tree with the dnf command line.

Templates decide which packages go in (installpkg ... run_pkg_transaction); this module
only turns their requests into dnf transactions. dnf runs on the host with
--installroot, so the tree needs no package manager of its own.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import fnmatch
import glob
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from composer.run import ComposerError, CommandError, debug, info, run

# Where rpm keeps its database inside the tree. Debian's rpm defaults to ~/.rpmdb,
# so every rpm/dnf call gets a private HOME whose .rpmmacros says this.
RPMDB = "/usr/lib/sysimage/rpm"


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


def dnf_binary() -> str:
    """dnf 4 where the host has it, dnf5 where that is what it has."""
    for name in ("dnf", "dnf5", "dnf-3"):
        if shutil.which(name):
            return name
    raise ComposerError("dnf is not installed on this host (apt-get install dnf)")


def _repo_id(url: str, index: int) -> str:
    tail = re.sub(r"[^A-Za-z0-9]+", "-", urlparse(url).path).strip("-")[-24:] or "repo"
    return f"source{index}-{tail}"


def check_source(url: str, option: str = "--source") -> None:
    """Fail early, with the option (or kickstart file:line) named, on a source that cannot work."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ComposerError(f"{option} {url!r}: not a URL ({e})") from None
    if parsed.scheme not in ("file", "http", "https", "ftp") or (parsed.scheme != "file" and not parsed.netloc):
        raise ComposerError(f"{option} {url}: not a URL (use file:///path, http:// or https://)")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ComposerError(f"{option} {url!r}: a URL holds no white space or control characters")
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


_URL_KEYS = ("baseurl", "mirrorlist", "metalink")
_URL_SCHEMES = ("file", "http", "https", "ftp")


def check_repofile(path: Path) -> None:
    """A .repo file dnf can use: ini sections, each with a way to reach its packages,
    every URL a URL (librepo asserts on a garbage metalink and leaves its locks)."""
    import configparser

    if not path.exists():
        raise ComposerError(f"--repo {path}: no such file")
    if not path.is_file():
        raise ComposerError(f"--repo {path}: not a regular file (give a dnf .repo file)")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        text = path.read_text(errors="replace")
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as e:
        raise ComposerError(f"--repo {path}:{e.lineno}: not a .repo file: {e.line.strip()!r} before any [section]") from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]  # line is repr()'d by configparser
        raise ComposerError(f"--repo {path}:{lineno}: not a .repo file: cannot parse {line}") from None
    except configparser.Error as e:
        lineno = getattr(e, "lineno", None)
        where = f"{path}:{lineno}" if lineno else str(path)
        raise ComposerError(f"--repo {where}: not a .repo file: {e.message}") from None
    except OSError as e:
        raise ComposerError(f"--repo {path}: {e.strerror or e}") from None
    if not parser.sections():
        raise ComposerError(f"--repo {path}: no [repository] section")
    lines = text.splitlines()

    def where(section: str, key: str) -> str:
        """path:line of `key` in [section] (for the message)."""
        inside = False
        for n, line in enumerate(lines, 1):
            s = line.strip()
            if s.startswith("["):
                inside = s == f"[{section}]"
            elif inside and re.match(rf"{re.escape(key)}\s*[=:]", s):
                return f"{path}:{n}"
        return str(path)

    for name in parser.sections():
        if not any(parser.get(name, key, fallback="").strip() for key in _URL_KEYS):
            raise ComposerError(f"--repo {path}: [{name}] has no baseurl, mirrorlist or metalink")
        for key in _URL_KEYS:
            value = parser.get(name, key, fallback="").strip()
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
                    raise ComposerError(f"--repo {where(name, key)}: [{name}] {key} {url!r} is not a URL "
                                        "(file:///path, http://, https://)")
class DnfSession:
    """One install tree and the dnf transactions that fill it (a templates.PackageManager)."""

    def __init__(self, tree: Path, config: DnfConfig, workdir: Path) -> None:
        self.tree = tree
        self.config = config
        self.workdir = workdir
        self._to_install: list[str] = []
        self._to_remove: list[str] = []
        self._available: list[str] | None = None
        for url in config.sources:
            check_source(url)
        for f in config.repofiles:
            check_repofile(f)
        if not config.sources and not config.repofiles:
            raise ComposerError("no package source: give --source URL or --repo FILE")
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".rpmmacros").write_text(f"%_dbpath {RPMDB}\n")
        self.reposdir = workdir / "repos.d"
        self.reposdir.mkdir(exist_ok=True)
        for f in config.repofiles:
            shutil.copy(f, self.reposdir / f.name)
        (workdir / "dnf-log").mkdir(exist_ok=True)
        tree.mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(self.home), "LC_ALL": "C.UTF-8"}

    # -- dnf command line -------------------------------------------------------
    def _dnf_argv(self) -> list[str]:
        c = self.config
        c.cachedir.mkdir(parents=True, exist_ok=True)
        argv = [
            dnf_binary(), "-y", "--quiet",
            f"--installroot={self.tree}",
            f"--releasever={c.releasever}",
            f"--forcearch={c.arch}",
            "--noplugins",
            f"--setopt=reposdir={self.reposdir}",
            f"--setopt=cachedir={c.cachedir}",
            f"--setopt=logdir={self.workdir / 'dnf-log'}",
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
        for i, url in enumerate(c.sources):
            rid = _repo_id(url, i)
            argv.append(f"--repofrompath={rid},{url}")
            if url.startswith("file:"):
                # A local repository may be rebuilt between runs: never trust cached metadata.
                argv.append(f"--setopt={rid}.metadata_expire=0")
            # gpgcheck is per repo for --repofrompath repos
            argv.append(f"--setopt={rid}.gpgcheck={'0' if c.nogpgcheck else '1'}")
            argv.append(f"--setopt={rid}.skip_if_unavailable=False")
        for pattern in c.excludepkgs:
            argv.append(f"--exclude={pattern}")
        return argv

    def _rpm(self, *args: str) -> str:
        proc = run(["rpm", f"--root={self.tree}", f"--dbpath={RPMDB}", *args], env=self.env, capture=True)
        return proc.stdout.decode(errors="replace")

    @contextlib.contextmanager
    def _host_dirs_in_tree(self) -> Iterator[None]:
        """dnf 4 puts the installroot in front of cachedir and logdir, whatever they are set to,
        so its package cache and logs would land in the tree (and ship in the image) while the
        host cache stays empty. Symlinks at those paths in the tree send them to the host; they
        and the directories made for them are gone again after each dnf run."""
        made: list[Path] = []
        try:
            for host in (self.config.cachedir.resolve(), (self.workdir / "dnf-log").resolve()):
                link = self.tree / host.relative_to("/")
                if link.is_symlink() or link.exists():
                    continue
                missing = [d for d in reversed(link.parents) if d.is_relative_to(self.tree) and not d.exists()]
                link.parent.mkdir(parents=True, exist_ok=True)
                made += missing
                link.symlink_to(host)
                made.append(link)
            yield
        finally:
            for path in reversed(made):
                if path.is_symlink():
                    path.unlink()
                else:
                    with contextlib.suppress(OSError):  # not empty: dnf's own files, keep them
                        path.rmdir()

    def _dnf(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess[bytes]:
        with self._host_dirs_in_tree():
            return run(self._dnf_argv() + list(args), env=self.env, capture=capture)

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

    def _repo_error(self, stderr: str) -> str:
        """dnf's complaint about a repository, naming the --source it came from."""
        reason = _dnf_reason(stderr)
        origins = {_repo_id(url, i): f"--source {url}" for i, url in enumerate(self.config.sources)}
        for f in self.config.repofiles:
            for section in _repo_sections(f):
                origins.setdefault(section, f"--repo {f} [{section}]")
        for rid, origin in origins.items():
            if f"'{rid}'" in reason:
                reason = re.sub(r"^Error: ", "", reason.replace(f" for repo '{rid}'", "").replace(f"'{rid}'", "it"))
                return f"{origin}: cannot read the repository: {reason}"
        return f"cannot read the package repositories: {reason}"

    def _match(self, patterns: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
        return {p: [n for n in names if fnmatch.fnmatchcase(n, p)] for p in patterns}

    # -- templates.PackageManager -------------------------------------------------
    def install(self, patterns: Sequence[str], *, required: bool = True, exclude: Sequence[str] = ()) -> None:
        names = self.available()
        for pattern, matches in self._match(patterns, names).items():
            matches = [m for m in matches if not any(fnmatch.fnmatchcase(m, e) for e in exclude)]
            matches = [m for m in matches if not any(fnmatch.fnmatchcase(m, e) for e in self.config.excludepkgs)]
            if not matches:
                if required:
                    raise ComposerError(f"no package matches {pattern!r} in the repositories")
                debug(f"optional package {pattern!r} not available, skipped")
                continue
            self._to_install.extend(matches)

    def remove(self, patterns: Sequence[str]) -> None:
        self._to_remove.extend(patterns)

    def run_transaction(self) -> None:
        if self._to_install:
            pkgs = sorted(set(self._to_install))
            info(f"dnf: installing {len(pkgs)} requested packages and their dependencies")
            try:
                self._dnf("install", *pkgs)
            except CommandError as e:
                raise ComposerError(f"dnf transaction failed: {_dnf_reason(e.stderr)}") from None
        if self._to_remove:
            try:
                self._dnf("remove", "--setopt=clean_requirements_on_remove=False", *sorted(set(self._to_remove)))
            except CommandError as e:
                raise ComposerError(f"dnf remove failed: {_dnf_reason(e.stderr)}") from None
        self._to_install.clear()
        self._to_remove.clear()

    def installed(self) -> list[str]:
        return sorted(set(self._rpm("-qa", "--queryformat=%{NAME}\n").split()))

    def files_of(self, name: str) -> list[str]:
        out = self._rpm("-ql", name)
        return [line for line in out.splitlines() if line.startswith("/")]

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
        for i, url in enumerate(self.config.sources):
            h.update(url.encode() + b"\0")
            parsed = urlparse(url)
            if parsed.scheme == "file":
                h.update((Path(parsed.path) / "repodata" / "repomd.xml").read_bytes())
            else:
                remote_ids.append(_repo_id(url, i))
        for f in self.config.repofiles:
            h.update(f.read_bytes())
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                parser.read_string(f.read_text(), source=str(f))
            except configparser.Error as e:
                raise ComposerError(f"--repo {f}: cannot parse: {e}") from None
            remote_ids += [sec for sec in parser.sections() if sec != "main"]
        if remote_ids:
            self.available()
            for rid in remote_ids:
                # dnf keeps each repository's metadata in CACHEDIR/<id>-<16 hex digits>/.
                found = sorted(self.config.cachedir.glob(f"{glob.escape(rid)}-{'?' * 16}/repodata/repomd.xml"),
                               key=lambda p: p.stat().st_mtime)
                h.update(rid.encode() + b"\0" + (found[-1].read_bytes() if found else b"(no metadata)"))
        return h.hexdigest()


def _repo_sections(path: Path) -> list[str]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path)
    except configparser.Error:
        return []
    return parser.sections()


def _dnf_reason(stderr: str) -> str:
    """The lines of dnf's complaint that say what is wrong."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # Whole words only (not "libgpg-error0"), and not bare headings such as "Failed:".
    keep = [ln for ln in lines if not re.fullmatch(r"[\w ]+:", ln)
            and re.search(r"\b(error|problem|no match|nothing provides|conflicts?|cannot|failed)\b", ln, re.I)]
    text = " | ".join((keep or lines)[-4:])
    return text or "see the log for dnf's output"


def rpmdb_env(workdir: Path) -> dict[str, str]:
    """An environment whose rpm uses the tree's database path (for rpm calls outside a session)."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_dbpath {RPMDB}\n")
    return {"HOME": str(home)}


