"""The tree cache: a populated install tree kept between builds, keyed by what went into it.

The install stage (dnf driven by the install template) is the slow, network-bound part
of a build and depends only on a few inputs: the repositories' metadata, the package
requests, the rendered install template and the files it copies, the dnf options and
the build's variables. A build whose inputs hash to a stored key copies that tree back
instead of running dnf; every later stage (postinstall, cleanup, dracut, images) runs
as usual, so changing them never needs a fresh install.

Layout: CACHEDIR/trees/<key>/{tree/,meta.json}. An entry is written under a temporary
name and renamed into place only when complete (meta.json last), and it is checked
when used: an entry that fails a check is dropped and the build installs afresh.
Trees are copied with `cp -a` (reflinks where the filesystem has them), which keeps
ownership, modes, timestamps, xattrs, hard links, device nodes and the rpm database.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from composer import __version__
from composer.dnf import RPMDB
from composer.images.rootfs import tree_size
from composer.run import CommandError, ComposerError, debug, info, locked_mkdir, remove_stale, run
from composer.treecheck import fail_on

if TYPE_CHECKING:
    from composer.config import Config
    from composer.dnf import DnfSession
    from composer.templates import TemplateRunner

# Bump when the entry layout or the way composer installs a tree changes: old entries
# then simply stop matching.
FORMAT_VERSION = 1
# Entries kept; the least recently used beyond this are deleted after each store.
DEFAULT_KEEP = 3


@dataclasses.dataclass(frozen=True)
class InstallInputs:
    """Everything the populated tree depends on."""

    metadata_digest: str
    install_template: str  # rendered text, with the tree's path replaced by @TREE@
    template_files: tuple[tuple[str, str], ...] = ()  # (path in template dir, sha256) that `install` copies
    installpkgs: tuple[str, ...] = ()
    excludepkgs: tuple[str, ...] = ()
    arch: str = ""
    version: str = ""
    product: str = ""
    variables: tuple[tuple[str, str], ...] = ()
    dnf_argv: tuple[str, ...] = ()  # dnf's options, work paths left out
    source_date_epoch: int | None = None  # rpm stamps it as the install time of every package
    code: str = ""  # composer's version and a digest of its code: a fix to it never meets an old tree


def tree_key(inputs: InstallInputs) -> str:
    """sha256 of the inputs; order-insensitive where the order does not matter to dnf."""
    doc = dataclasses.asdict(inputs)
    doc["installpkgs"] = sorted(set(inputs.installpkgs))
    doc["excludepkgs"] = sorted(set(inputs.excludepkgs))
    doc["variables"] = sorted(inputs.variables)
    doc["template_files"] = sorted(inputs.template_files)
    doc["format"] = FORMAT_VERSION
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def code_digest() -> str:
    """composer's version and a digest of all its Python code (any of it may shape the tree)."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256(__version__.encode() + b"\0")
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    return f"{__version__}:{h.hexdigest()}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode() + b"\0")
            if p.is_file():
                h.update(p.read_bytes())
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()


def install_inputs(cfg: Config, session: DnfSession, runner: TemplateRunner, template: Path) -> InstallInputs:
    """Gather the inputs of the install stage of this build (before anything is installed)."""
    tree = str(session.tree)
    text = runner.render(template).replace(tree, "@TREE@")
    files = tuple(
        (str(p.relative_to(runner.templatedir)) if p.is_relative_to(runner.templatedir) else str(p), _file_digest(p))
        for p in runner.install_sources()
    )
    argv = session.shaping_options()
    return InstallInputs(
        metadata_digest=session.metadata_digest(),
        install_template=text,
        template_files=files,
        installpkgs=tuple(cfg.installpkgs),
        excludepkgs=tuple(cfg.excludepkgs),
        arch=cfg.arch,
        version=cfg.version,
        product=cfg.product,
        # Functions (lorax's udev, lower) are composer's code, which `code` covers; their repr
        # holds an address that changes with every run. The work directory is this build's.
        variables=tuple((str(k), repr(v)) for k, v in runner.variables.items() if not callable(v) and k != "workdir"),
        dnf_argv=tuple(argv),
        source_date_epoch=cfg.source_date_epoch,
        code=code_digest(),
    )


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    packages: tuple[str, ...]
    treeinfo: Mapping[str, Mapping[str, str]]
    size: int

    @property
    def tree(self) -> Path:
        return self.path / "tree"


def _cp_a(src: Path, dest: Path) -> None:
    """Copy src's contents into dest keeping everything rpm and the runtime care about."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        run(["cp", "-a", "--reflink=auto", "--", f"{src}/.", str(dest)])
    except CommandError as e:
        # cp names every file it could not write; its last complaint says enough.
        reason = (e.stderr.strip().splitlines() or ["cp failed"])[-1]
        raise ComposerError(f"cannot copy {src} to {dest}: {reason}") from None


class TreeCache:
    """Populated trees under ROOT (CACHEDIR/trees), at most `keep` of them."""

    def __init__(self, root: Path, keep: int = DEFAULT_KEEP) -> None:
        self.root = root
        self.keep = keep

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Half-written entries of killed builds (their writers no longer hold the lock).
        remove_stale(self.root, ".tmp-*")
        remove_stale(self.root, ".evict-*")

    def _read(self, key: str) -> Entry | None:
        """The entry for key if it passes its checks; a broken entry is dropped."""
        d = self.root / key
        if not d.is_dir():
            return None
        try:
            meta = json.loads((d / "meta.json").read_text())
            ok = (
                meta.get("format") == FORMAT_VERSION
                and meta.get("key") == key
                and (d / "tree").is_dir()
                and any((d / "tree" / RPMDB.lstrip("/")).iterdir())
                and meta.get("packages")
            )
        except (OSError, ValueError):
            ok = False
        if not ok:
            info(f"tree cache: entry {key[:12]} is incomplete or damaged; dropping it")
            self.discard(key)
            return None
        return Entry(key, d, tuple(meta["packages"]), meta.get("treeinfo") or {}, int(meta.get("size", 0)))

    def lookup(self, key: str) -> Entry | None:
        self._prepare()
        return self._read(key)

    def restore(self, entry: Entry, tree: Path) -> bool:
        """Copy the entry's tree into `tree`; False if the entry vanished (evicted meanwhile)."""
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                # Shared: other builds may read it too; an eviction takes it exclusively.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                if os.stat(entry.path).st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
            _cp_a(entry.tree, tree)
            os.utime(entry.path / "meta.json")  # most recently used: evicted last
            return True
        finally:
            os.close(fd)

    def store(self, key: str, tree: Path, *, packages: Sequence[str], treeinfo: Mapping[str, Mapping[str, str]]) -> Entry | None:
        """Keep a copy of `tree` under key. A failure (e.g. a full disk) costs only the entry."""
        self._prepare()
        tmp = self.root / f".tmp-{key[:16]}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        fd = locked_mkdir(tmp)
        try:
            _cp_a(tree, tmp / "tree")
            size = tree_size(tmp).blocks_bytes
            meta = {
                "format": FORMAT_VERSION,
                "key": key,
                "created": int(time.time()),
                "size": size,
                "packages": list(packages),
                "treeinfo": treeinfo,
            }
            with (tmp / "meta.json").open("w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            final = self.root / key
            if final.exists():
                self.discard(key)  # a --no-cache build refreshes the entry
            try:
                tmp.rename(final)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                debug(f"tree cache: {key[:12]} was stored by another build meanwhile")
                shutil.rmtree(tmp, ignore_errors=True)
        except (ComposerError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            info(f"tree cache: not stored ({e})")
            return None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(fd)
        self.evict()
        return Entry(key, final, tuple(packages), treeinfo, size)

    def entries(self) -> list[Path]:
        """Complete entries, most recently used first."""
        if not self.root.is_dir():
            return []
        found = [d for d in self.root.iterdir() if not d.name.startswith(".") and (d / "meta.json").is_file()]
        return sorted(found, key=lambda d: (d / "meta.json").stat().st_mtime, reverse=True)

    def evict(self) -> None:
        for d in self.entries()[self.keep :]:
            info(f"tree cache: evicting {d.name[:12]}")
            self.discard(d.name)

    def discard(self, key: str) -> None:
        """Delete an entry unless a build is copying from it right now."""
        d = self.root / key
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            # Out of sight first, so nobody starts using a half-deleted entry.
            gone = self.root / f".evict-{key[:16]}-{os.getpid()}"
            d.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        finally:
            os.close(fd)


def cached_install(
    cfg: Config,
    session: DnfSession,
    runner: TemplateRunner,
    template: Path,
    install: Callable[[], None],
    verify: Callable[[], list[str]],
) -> list[str]:
    """Populate session.tree with `install()` or from the tree cache; return the installed NEVRAs.

    `verify` checks the tree against its package database: a cached tree that fails it
    is dropped, a freshly installed one that fails it stops the build.
    """
    if not cfg.use_cache:
        info("install: tree cache not used (--no-cache)")
        install()
        fail_on(verify(), "after the install stage")
        return session.nevras()
    inputs = install_inputs(cfg, session, runner, template)
    key = tree_key(inputs)
    debug(f"tree cache key {key[:12]} from {json.dumps(dataclasses.asdict(inputs), sort_keys=True)}")
    cache = TreeCache(cfg.cachedir / "trees")
    entry = cache.lookup(key)
    if entry is not None:
        start = time.monotonic()
        if cache.restore(entry, session.tree):
            packages = session.nevras()
            problems = verify() if packages == list(entry.packages) else ["its package list differs"]
            if not problems:
                runner.treeinfo.update({s: dict(v) for s, v in entry.treeinfo.items()})
                info(
                    f"install: tree cache hit (key {key[:12]}, {len(packages)} packages, "
                    f"{entry.size / 2**20:.0f} MiB copied in {time.monotonic() - start:.1f}s)"
                )
                return packages
            info(f"install: tree cache entry {key[:12]} fails its check ({problems[0]}); installing afresh")
            cache.discard(key)
        # Whatever the failed restore left must not mix with a fresh install.
        shutil.rmtree(session.tree, ignore_errors=True)
        session.tree.mkdir()
    info(f"install: tree cache miss (key {key[:12]})")
    install()
    fail_on(verify(), "after the install stage")
    packages = session.nevras()
    start = time.monotonic()
    stored = cache.store(key, session.tree, packages=packages, treeinfo=runner.treeinfo)
    if stored is not None:
        info(f"install: tree cached as {key[:12]} ({stored.size / 2**20:.0f} MiB in {time.monotonic() - start:.1f}s)")
    return packages
