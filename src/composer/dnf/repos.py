"""The repositories of a build: the one model of --source, --mirrorlist and --repo.

A .repo file is read once (read_repofile: its sections, with the line of each option),
checked (check_repofile, check_config) and turned, with the sources and mirror lists,
into Repository objects: what composer writes into dnf's reposdir (write_repofiles).
Credentials are options of their own there, never part of a URL, and the files are
0600 with the passwords in only while dnf runs.
"""

from __future__ import annotations

import configparser
import dataclasses
import glob
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from composer.dnf.settings import DnfConfig
from composer.dnf.urls import (
    check_proxy,
    check_source,
    check_url,
    is_local,
    is_url,
    local_path,
    mirrorlist_urls,
    parse_url,
    path_of,
    split_userinfo,
)
from composer.run import MASK, ComposerError, register_secret

_URL_KEYS = ("baseurl", "mirrorlist", "metalink")
# dnf's repository options that hold credentials: written only into the 0600 files dnf
# reads while it runs (masked otherwise), never onto a command line or into a log. The
# passwords are also secrets (run.register_secret) wherever composer prints: a user name
# ("admin") is too common a word to mask in every line.
CREDENTIAL_KEYS = ("username", "password", "proxy_username", "proxy_password")
SECRET_KEYS = ("password", "proxy_password")
# How packages are fetched, not what they are: not part of a tree's cache key.
_FETCH_KEYS = ("proxy", "proxy_auth_method", "sslverify", *CREDENTIAL_KEYS)
SOURCES_REPO = "composer-sources.repo"


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
                if url and not is_url(url):
                    line = sec.line_of(key)
                    where = f"{path}:{line}" if line else str(path)
                    raise ComposerError(f"--repo {where}: [{name}] {key} {url!r} is not a URL (file:///path, http://, https://)")


def repofile_paths(path: Path) -> list[Path]:
    """Local directories a .repo file's baseurls name (best effort: check_repofile judges the file)."""
    try:
        sections = read_repofile(path)
    except ComposerError:
        return []
    found = []
    for sec in sections:
        for url in re.split(r"[\s,]+", sec.get("baseurl")):
            if parse_url(url).path and (p := local_path(url, decoded=True)) is not None:
                found.append(p)
    return found


def check_config(config: DnfConfig) -> None:
    """Fail early, naming the option, on package sources and repository options that cannot work."""
    if not config.sources and not config.repofiles and not config.mirrorlists:
        raise ComposerError("no package source: give --source URL or --repo FILE")
    for url in config.sources:
        check_source(url)
    for url in config.mirrorlists:
        check_url(url, "--mirrorlist")
        bases = mirrorlist_urls(url)
        if is_local(url) and not bases:
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


# The repositories of a build, by the file composer writes each into (reposdir).
Repositories = list[tuple[str, list[Repository]]]


def repo_id(url: str, index: int) -> str:
    tail = re.sub(r"[^A-Za-z0-9]+", "-", parse_url(url).path).strip("-")[-24:] or "repo"
    return f"source{index}-{tail}"


def mirror_id(url: str, index: int) -> str:
    return "mirror" + repo_id(url, index).removeprefix("source")


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


def repositories(config: DnfConfig) -> Repositories:
    """The repositories of a build, by the file composer writes each into (reposdir)."""
    gpgcheck = "0" if config.nogpgcheck else "1"
    own = dict(config.repo_options)  # a URL's own options (a kickstart repo's), after composer's
    sources = []
    for i, url in enumerate(config.sources):
        opts = [
            ("name", repo_id(url, i)),
            ("baseurl", url),
            ("enabled", "1"),
            ("gpgcheck", gpgcheck),
            ("skip_if_unavailable", "False"),
        ]
        if is_local(url):
            # A local repository may be rebuilt between runs: never trust cached metadata.
            opts.append(("metadata_expire", "0"))
        opts += own.get(url, ())
        sources.append(Repository(repo_id(url, i), f"--source {url}", tuple(_with_credentials(opts, config.proxy))))
    mirrors = []
    for i, url in enumerate(config.mirrorlists):
        opts = [
            ("name", mirror_id(url, i)),
            ("mirrorlist", url),
            ("enabled", "1"),
            ("gpgcheck", gpgcheck),
            ("skip_if_unavailable", "False"),
            ("metadata_expire", "0"),
            *own.get(url, ()),
        ]
        mirrors.append(Repository(mirror_id(url, i), f"--mirrorlist {url}", tuple(_with_credentials(opts, config.proxy))))
    files = [(SOURCES_REPO, sources), ("composer-mirrors.repo", mirrors)]
    for i, f in enumerate(config.repofiles):
        repos = [
            Repository(
                sec.name,
                f"--repo {f} [{sec.name}]",
                tuple(_with_credentials(list(sec.options), config.proxy if sec.name != "main" else None)),
            )
            for sec in read_repofile(f)
        ]
        files.append((f"repo{i}-{f.name.removesuffix('.repo')}.repo", repos))
    return [(name, repos) for name, repos in files if repos]


def write_repofiles(reposdir: Path, repos: Repositories, *, secrets: bool) -> None:
    """reposdir's files, 0600 (secrets: the passwords in, else masked, as a kept work
    directory shows them)."""
    for name, rs in repos:
        fd = os.open(reposdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write("\n".join(r.text(secrets=secrets) for r in rs))


def local_paths(config: DnfConfig, repos: Repositories) -> list[Path]:
    """Host paths dnf reads besides the work tree: local repositories and keys."""
    paths = [path_of(u) for m in config.mirrorlists for u in mirrorlist_urls(m) if is_local(u)]
    for repo in (r for _, rs in repos for r in rs):
        for key, value in repo.options:
            if key.lower() in (*_URL_KEYS, "gpgkey"):
                for url in re.split(r"[\s,]+", value.strip()):
                    if is_local(url):
                        path = path_of(url)
                        paths.append(path if key.lower() == "baseurl" else path.parent)
    return paths


def origins(repos: Repositories) -> dict[str, str]:
    """Each repository id, and how messages name where it came from (the first of an id)."""
    found: dict[str, str] = {}
    for _, rs in repos:
        for r in rs:
            found.setdefault(r.id, r.origin)
    return found


def metadata_digest(config: DnfConfig, repos: Repositories, refresh: Callable[[], object]) -> str:
    """A digest of the repositories' metadata (their repomd.xml), for keying caches.

    Local repositories are read in place. For remote ones (and .repo files) dnf first
    refreshes its cached copy (`refresh`: the metadata load a build does anyway), so a
    mirror that changed changes the digest, not only a changed URL.
    """
    h = hashlib.sha256()
    remote_ids: list[str] = []
    # Credentials say who fetches, not what: a changed password keeps the key.
    for i, url in enumerate(config.sources):
        h.update(split_userinfo(url)[0].encode() + b"\0")
        path = local_path(url)
        if path is not None:
            h.update((path / "repodata" / "repomd.xml").read_bytes())
        else:
            remote_ids.append(repo_id(url, i))
    for i, url in enumerate(config.mirrorlists):
        h.update(split_userinfo(url)[0].encode() + b"\0")
        bases = mirrorlist_urls(url)
        if bases and all(is_local(b) for b in bases):
            for b in bases:
                h.update((path_of(b) / "repodata" / "repomd.xml").read_bytes())
        else:
            remote_ids.append(mirror_id(url, i))
    for r in (r for _, rs in repos for r in rs if r.origin.startswith("--repo ")):
        h.update("\n".join(r.shaping()).encode() + b"\0")
        if r.id != "main":
            remote_ids.append(r.id)
    if remote_ids:
        refresh()
        for rid in remote_ids:
            # dnf keeps each repository's metadata in CACHEDIR/<id>-<16 hex digits>/.
            found = sorted(
                config.cachedir.glob(f"{glob.escape(rid)}-{'?' * 16}/repodata/repomd.xml"), key=lambda p: p.stat().st_mtime
            )
            h.update(rid.encode() + b"\0" + (found[-1].read_bytes() if found else b"(no metadata)"))
    return h.hexdigest()


def file_sources(config: DnfConfig) -> Sequence[Path]:
    """The directories of the local --source repositories."""
    return [p for p in (local_path(url) for url in config.sources) if p is not None]
