"""Persistent overlays of live media: how full they are, and merging them into squashfs.img.

A medium with persistence keeps the live system's writes in LiveOS/overlay-<LABEL>-<UUID>:
- a file: a dm-snapshot persistent COW store over rootfs.img (see dmsnap.py), or
- a directory: overlayfs persistence, with the upper dir in upper/ (dracut: overlayfs/)
  and the work dir in work/ (dracut: ovlwork/).

Merging folds those writes into a new, recompressed squashfs.img. The rules, because
this is the user's data: everything is built in a scratch directory (inside LiveOS/, or
--workdir with the result then copied beside the old image), checked (fsck, squashfs
listing, content compare), synced, and only then renamed over the old image; the overlay
is reset last. A crash between the two is harmless for a COW overlay: its chunks re-applied over
the merged image present the same blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from composer.config import Compression
from composer.images.sparse import allocated_size, copy_sparse
from composer.images.squashfs import make_squashfs
from composer.live.dmsnap import CowStore, apply_store
from composer.live.sparsify import (
    EXT_TYPES,
    copy_prefix_sparse,
    fs_type,
    human,
    refuse_if_in_use,
)
from composer.run import ComposerError, info, run

OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# Features whose upper layout needs the lower layer to interpret (renamed dirs,
# metadata-only copies). Refused rather than merged wrongly.
_UNSUPPORTED_XATTRS = ("redirect", "metacopy")
_SCRATCH_PREFIX = ".composer-merge-"


@dataclasses.dataclass(frozen=True)
class Medium:
    root: Path
    liveos: Path
    squashfs: Path | None  # LiveOS/squashfs.img
    rootfs: Path | None  # LiveOS/rootfs.img directly on the medium (no squashfs)
    overlay: Path | None  # LiveOS/overlay-LABEL-UUID (file: COW store; directory: overlayfs)


def _refuse_link(path: Path, what: str) -> None:
    """Nothing inside a medium is followed: merge replaces and empties what it finds there,
    and a link would make it read, copy or delete what the link points at."""
    if os.path.islink(path):
        raise ComposerError(
            f"{path} is a symbolic link (to {os.readlink(path)}): composer never follows a link "
            f"inside a medium or its overlay; put the {what} itself there"
        )


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def find_medium(media: Path, overlay_name: str | None = None) -> Medium:
    liveos = media / "LiveOS"
    _refuse_link(liveos, "LiveOS directory")
    if not liveos.is_dir():
        raise ComposerError(f"{media}: no LiveOS/ directory (expected a live medium's root or its mount point)")
    sq = liveos / "squashfs.img"
    rf = liveos / "rootfs.img"
    for p in (sq, rf):
        _refuse_link(p, "image")
    if not stat.S_ISREG(_lstat_mode(sq)) and not stat.S_ISREG(_lstat_mode(rf)):
        raise ComposerError(f"{liveos}: neither squashfs.img nor rootfs.img found")
    if overlay_name:
        ov: Path | None = _named_overlay(liveos, overlay_name)
    else:
        found = sorted(p for p in liveos.glob("overlay-*"))
        for p in found:
            if p.is_symlink():
                raise ComposerError(
                    f"{p} is a symbolic link: an overlay is a file or directory in LiveOS/ "
                    "(merge resets it; it never follows a link)"
                )
        if len(found) > 1:
            raise ComposerError(f"{liveos}: several overlays ({', '.join(p.name for p in found)}); choose one with --overlay")
        ov = found[0] if found else None
    return Medium(media, liveos, sq if sq.is_file() else None, rf if rf.is_file() else None, ov)


def _named_overlay(liveos: Path, name: str) -> Path:
    """--overlay NAME: an overlay-* entry of this medium's LiveOS/, nothing else (merge
    resets it: a path elsewhere, or the medium's own image, would be destroyed)."""
    given = Path(name)
    ov = liveos / given.name
    if len(given.parts) > 1 or given.is_absolute():
        # A path is accepted only if it names an entry of LiveOS/ itself.
        if not os.path.lexists(given) or os.path.realpath(given.parent) != os.path.realpath(liveos):
            raise ComposerError(
                f"--overlay {name}: not in {liveos}; give the name of an overlay in the medium's "
                "LiveOS/ (e.g. overlay-LABEL-UUID)"
            )
    if not given.name.startswith("overlay-"):
        raise ComposerError(
            f"--overlay {name}: not an overlay (their names start with overlay-, e.g. "
            f"overlay-LABEL-UUID); see the overlay-* entries of {liveos}"
        )
    if not os.path.lexists(ov):
        raise ComposerError(f"{ov}: no such overlay")
    if os.path.islink(ov):
        raise ComposerError(f"--overlay {name}: {ov} is a symbolic link; give the overlay itself")
    return ov


def _upper_work(ov: Path) -> tuple[Path, Path]:
    """The overlay's upper and work directories: real directories, never links (a `work`
    linking to a host directory had that directory emptied by the reset)."""
    _refuse_link(ov, "overlay directory")
    for upper, work in (("upper", "work"), ("overlayfs", "ovlwork")):
        _refuse_link(ov / upper, "directory")
        if stat.S_ISDIR(_lstat_mode(ov / upper)):
            _refuse_link(ov / work, "directory")
            if os.path.lexists(ov / work) and not stat.S_ISDIR(_lstat_mode(ov / work)):
                raise ComposerError(f"{ov / work}: not a directory; an overlay's {work} is a directory (or absent)")
            return ov / upper, ov / work
    raise ComposerError(f"{ov}: an overlay directory needs upper/ (or dracut's overlayfs/)")


@dataclasses.dataclass(frozen=True)
class OverlayStatus:
    overlay: str
    kind: str  # "dm-snapshot" or "overlayfs"
    valid: bool
    allocated_bytes: int
    total_bytes: int
    dmsetup_status: str | None = None  # "<allocated>/<total> <metadata>" sectors, or "Invalid"
    chunk_sectors: int | None = None
    exceptions: int | None = None
    fresh: bool = False  # COW header never initialised: nothing written yet
    files: int | None = None  # overlayfs: entries in the upper dir
    whiteouts: int | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.allocated_bytes / self.total_bytes if self.total_bytes else 0.0

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "percent": round(self.percent, 2)}, indent=2)

    def text(self) -> str:
        if not self.valid:
            return f"{self.overlay}: {self.kind} overlay INVALID (overflowed or dropped by the kernel); dmsetup status: Invalid"
        used = f"{human(self.allocated_bytes)} of {human(self.total_bytes)} used ({self.percent:.1f}%)"
        line = f"{self.overlay}: {self.kind} overlay, {used}"
        if self.kind == "dm-snapshot":
            line += f"; {self.exceptions} chunks of {self.chunk_sectors} sectors; dmsetup status: {self.dmsetup_status}"
            if self.fresh:
                line += " (never used)"
        else:
            line += f"; {self.files} entries, {self.whiteouts} deletions"
        return line


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _scandir(d: Path) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of a directory's entries, sorted; `d` itself is opened without following a
    link (a directory swapped for one while we work is refused, not read)."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ComposerError(
                f"{d} is not a directory but a {'symbolic link' if os.path.islink(d) else 'file'} "
                "(it changed while composer read it?): composer never follows a link inside a "
                "medium; nothing more was done"
            ) from None
        raise
    try:
        with os.scandir(fd) as it:
            return sorted(((e.name, e.stat(follow_symlinks=False)) for e in it), key=lambda x: x[0])
    finally:
        os.close(fd)


def _walk(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    stack = [top]
    while stack:
        d = stack.pop()
        for name, st in _scandir(d):
            yield d / name, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(d / name)


def overlay_status(media: Path, overlay_name: str | None = None) -> OverlayStatus:
    m = find_medium(media, overlay_name)
    if m.overlay is None:
        raise ComposerError(f"{m.liveos}: no persistent overlay (LiveOS/overlay-<LABEL>-<UUID>)")
    if stat.S_ISREG(os.lstat(m.overlay).st_mode):
        store = CowStore.read(m.overlay, require_valid=False, follow_symlinks=False)
        u = store.usage()
        return OverlayStatus(
            m.overlay.name,
            "dm-snapshot",
            store.valid,
            u.allocated_sectors * 512,
            u.total_sectors * 512,
            store.status(),
            store.chunk_sectors,
            len(store.exceptions),
            fresh=store.header is None,
        )
    upper, _ = _upper_work(m.overlay)
    used = files = whiteouts = 0
    for _, st in _walk(upper):
        files += 1
        whiteouts += _is_whiteout(st)
        used += st.st_blocks * 512
    vfs = os.statvfs(upper)
    # Total: what the upper dir could grow to, i.e. its current use plus the free space.
    return OverlayStatus(
        m.overlay.name, "overlayfs", True, used, used + vfs.f_bavail * vfs.f_frsize, files=files, whiteouts=whiteouts
    )


# --- applying an overlayfs upper dir to a tree ---


@dataclasses.dataclass
class ApplyStats:
    copied: int = 0
    deleted: int = 0
    opaque: int = 0


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for n in names:
        if n.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        with contextlib.suppress(FileNotFoundError):
            out[n] = os.getxattr(path, n, follow_symlinks=False)
    return out


def _overlay_xattr(path: Path, name: str) -> bytes | None:
    for prefix in OVERLAY_XATTR_PREFIXES:
        try:
            return os.getxattr(path, prefix + name, follow_symlinks=False)
        except OSError:
            continue
    return None


def check_upper(upper: Path) -> None:
    """Refuse layouts this merge cannot interpret on its own."""
    for path, _st in [(upper, os.lstat(upper)), *_walk(upper)]:
        for name in _UNSUPPORTED_XATTRS:
            if _overlay_xattr(path, name) is not None:
                raise ComposerError(
                    f"{path}: overlayfs '{name}' entries (redirect_dir/metacopy features) are not supported by merge"
                )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _copy_meta(src: Path, dst: Path, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid bits
    want = _xattrs(src)
    for n in set(_xattrs(dst)) - set(want):
        os.removexattr(dst, n, follow_symlinks=False)
    for n, v in want.items():
        os.setxattr(dst, n, v, follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def apply_upper(upper: Path, target: Path) -> ApplyStats:
    """Make `target` (the lower tree) look like the overlayfs mount of upper over it.

    Whiteouts (0/0 character devices) delete; opaque directories replace the lower
    directory wholesale; other entries replace whatever the lower tree had; merged
    directories take the upper directory's attributes, as overlayfs shows them.
    """
    stats = ApplyStats()
    links: dict[tuple[int, int], Path] = {}

    def walk(src_dir: Path, dst_dir: Path) -> None:
        for name, st in _scandir(src_dir):
            src, dst = src_dir / name, dst_dir / name
            if _is_whiteout(st):
                if os.path.lexists(dst):
                    _remove(dst)
                    stats.deleted += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                opaque = _overlay_xattr(src, "opaque") == b"y"
                if os.path.lexists(dst) and (opaque or not (dst.is_dir() and not dst.is_symlink())):
                    _remove(dst)
                    stats.opaque += opaque
                if not os.path.lexists(dst):
                    os.mkdir(dst, 0o700)
                walk(src, dst)
                _copy_meta(src, dst, st)  # after the children, so the mtime sticks
                continue
            if os.path.lexists(dst):
                _remove(dst)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], dst)
                continue
            if stat.S_ISREG(st.st_mode):
                copy_prefix_sparse(src, dst, st.st_size, follow_symlinks=False)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dst)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(dst, st.st_mode, st.st_rdev)
            else:
                continue  # sockets do not survive a reboot anyway
            _copy_meta(src, dst, st)
            if st.st_nlink > 1:
                links[key] = dst
            stats.copied += 1

    walk(upper, target)
    _copy_meta(upper, target, os.lstat(upper))  # the upper root's attributes are the merged root's
    return stats


def compare_trees(a: Path, b: Path) -> list[str]:
    """Differences between two trees: names, types, owners, modes, xattrs, content, link targets, mtimes."""
    diffs: list[str] = []

    def meta(p: Path, st: os.stat_result) -> tuple[object, ...]:
        m: tuple[object, ...] = (stat.S_IFMT(st.st_mode), st.st_uid, st.st_gid, sorted(_xattrs(p).items()))
        if not stat.S_ISLNK(st.st_mode):
            m += (stat.S_IMODE(st.st_mode),)
        if not stat.S_ISDIR(st.st_mode):  # a dir's mtime depends on how it was filled
            m += (int(st.st_mtime),)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            m += (st.st_rdev,)
        return m

    def walk(pa: Path, pb: Path, rel: str) -> None:
        na, nb = set(os.listdir(pa)), set(os.listdir(pb))
        for n in sorted(na ^ nb):
            diffs.append(f"{rel}/{n}: only in {a if n in na else b}")
        for n in sorted(na & nb):
            fa, fb = pa / n, pb / n
            sa, sb = os.lstat(fa), os.lstat(fb)
            if meta(fa, sa) != meta(fb, sb):
                diffs.append(f"{rel}/{n}: metadata differs {meta(fa, sa)} != {meta(fb, sb)}")
                continue
            if stat.S_ISDIR(sa.st_mode):
                walk(fa, fb, f"{rel}/{n}")
            elif stat.S_ISLNK(sa.st_mode):
                if os.readlink(fa) != os.readlink(fb):
                    diffs.append(f"{rel}/{n}: link target differs")
            elif stat.S_ISREG(sa.st_mode) and (sa.st_size != sb.st_size or not _same_content(fa, fb)):
                diffs.append(f"{rel}/{n}: content differs")

    walk(a, b, "")
    return diffs


def _same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


# --- merge ---


@dataclasses.dataclass(frozen=True)
class MergeResult:
    overlay: str
    kind: str
    target: str  # the file that was replaced
    dry_run: bool
    seconds: float
    old_size: int
    new_size: int
    steps: tuple[str, ...]


def _free_bytes(path: Path) -> int:
    vfs = os.statvfs(path)
    return vfs.f_bavail * vfs.f_frsize


def _need_space(where: Path, needed: int, what: str) -> None:
    free = _free_bytes(where)
    if free < needed:
        raise ComposerError(
            f"overlay merge: not enough free space on the filesystem of {where}: {what} needs about "
            f"{human(needed)}, {human(free)} free; nothing was changed"
        )


def _squashfs_info(img: Path) -> tuple[str, int]:
    out = run(["unsquashfs", "-s", img], capture=True, quiet=True).stdout.decode(errors="replace")
    comp = re.search(r"^Compression (\S+)", out, re.MULTILINE)
    return (comp.group(1) if comp else "xz"), img.stat().st_size


def _squashfs_list(img: Path) -> dict[str, int]:
    """path -> size ('' is the root) from `unsquashfs -lln` (numeric owners, sizes)."""
    out = run(["unsquashfs", "-lln", "-d", "", img], capture=True, quiet=True).stdout.decode(errors="replace")
    entries: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"^(\S{10})\s+\d+/\d+\s+(\d+|\d+,\s*\d+)\s+\S+\s+\S+\s+(.*)$", line)
        if m:
            name = m.group(3).split(" -> ")[0] if m.group(1)[0] == "l" else m.group(3)
            size = int(m.group(2)) if m.group(2).isdigit() else 0
            entries[name.lstrip("/")] = size
    return entries


def _check_origin(img: Path, shown: Path) -> None:
    """The image the overlay belongs to holds a filesystem before anything is merged:
    a damaged or foreign rootfs.img is reported as such, not as an unclean merge."""
    t = fs_type(img)
    if not t:
        where = "" if img == shown else f" (LiveOS/rootfs.img inside {shown})"
        raise ComposerError(
            f"overlay merge: {img.name}{where} holds no recognised filesystem: the medium's image "
            "is damaged or not a live image (--repair cannot help); nothing was changed"
        )


def _fsck(img: Path, *, repair: bool) -> None:
    """Check the merged filesystem. Read-only unless `repair`: a clean merge stays byte-exact."""
    t = fs_type(img)
    if t in EXT_TYPES:
        # -p (repair): replay the journal and make only the fixes that are always safe.
        proc = run(["e2fsck", "-fp" if repair else "-fn", img], check=False, capture=True)
        if proc.returncode == 0 or (repair and proc.returncode == 1):
            return
        hint = "" if repair else " (after an unclean shutdown the journal needs replaying: try --repair)"
        raise ComposerError(
            f"overlay merge: the merged {t} filesystem is not clean (e2fsck exit {proc.returncode}){hint}; nothing was changed"
        )
    if t == "btrfs":
        run(["btrfs", "check", "--readonly", img])
    else:
        info(f"overlay merge: no filesystem check for {t or 'unknown content'} in {img.name}")


def _verify_squashfs(new: Path, expect_rootfs: Path | None, expect_tree: Path | None, scratch: Path) -> None:
    """The new squashfs lists what it should, and its content equals what we built."""
    listing = _squashfs_list(new)
    check = scratch / "verify"
    if expect_rootfs is not None:
        if listing.get("LiveOS/rootfs.img") != expect_rootfs.stat().st_size:
            raise ComposerError(
                f"overlay merge: new {new.name} does not list LiveOS/rootfs.img of the right size; nothing was changed"
            )
        run(["unsquashfs", "-n", "-d", check, new, "LiveOS/rootfs.img"])
        run(["cmp", expect_rootfs, check / "LiveOS" / "rootfs.img"])
    if expect_tree is not None:
        run(["unsquashfs", "-n", "-d", check, new])
        diffs = compare_trees(expect_tree, check)
        if diffs:
            raise ComposerError(
                f"overlay merge: new {new.name} differs from the merged tree ({diffs[0]}, ...); nothing was changed"
            )
    shutil.rmtree(check, ignore_errors=True)


def _overlayfs_mounted(upper: Path) -> bool:
    real = os.path.realpath(upper)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            opts = line.rsplit(" - ", 1)[-1]
            if f"upperdir={real}" in opts.replace("\\040", " "):
                return True
    return False


@contextlib.contextmanager
def _loop_mounted(img: Path, mnt: Path) -> Iterator[Path]:
    """Mount an image read-write through a loop device; both are always torn down."""
    dev = run(["losetup", "--find", "--show", img], capture=True).stdout.decode().strip()
    try:
        mnt.mkdir(exist_ok=True)
        run(["mount", dev, mnt])
        try:
            yield mnt
        finally:
            run(["umount", mnt])
    finally:
        run(["losetup", "-d", dev])


_FOREIGN_FS = ("vfat", "msdos", "exfat", "ntfs", "ntfs3", "fuseblk")


def _fs_of(path: Path) -> str:
    proc = run(["findmnt", "-n", "-o", "FSTYPE", "-T", path], capture=True, check=False, quiet=True)
    return proc.stdout.decode().strip()


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(new: Path, dest: Path) -> None:
    """Put `new` in place of `dest` atomically, on disk before and after the rename.

    Live media are USB sticks that get pulled: the data must be on the stick before the
    name points at it. From another filesystem it is first copied beside `dest`, into a
    directory of this run's own (no name there that anyone could have planted a link at).
    """
    if not stat.S_ISREG(_lstat_mode(dest)):
        raise ComposerError(
            f"overlay merge: {dest} is no longer a regular file (it changed during the merge); nothing was changed"
        )
    mode = stat.S_IMODE(os.lstat(dest).st_mode)
    with contextlib.ExitStack() as stack:
        if not _same_fs(new, dest.parent):
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=dest.parent, prefix=_SCRATCH_PREFIX)))
            staged = staging / dest.name
            copy_sparse(new, staged)
            run(["cmp", new, staged])
            new = staged
        os.chmod(new, mode)
        _fsync(new)
        os.replace(new, dest)
    _fsync(dest.parent)


@contextlib.contextmanager
def _prepared_reset(plan: MergePlan) -> Iterator[Callable[[], None]]:
    """Everything the reset needs, made before the image is replaced (in a directory of this
    run's own, beside the overlay): afterwards the reset is renames only, which a link or a
    full disk cannot make fail halfway. Yields the reset; the directory goes at the end."""
    ov = plan.overlay
    with tempfile.TemporaryDirectory(dir=ov if plan.store is None else ov.parent, prefix=".composer-reset-") as d:
        aside = Path(d)
        if plan.store is not None:
            # A valid empty store of the same size and chunk size: sparse, never half-reset.
            fresh = aside / ov.name
            CowStore.write(fresh, plan.store.chunk_sectors, [], size=plan.store.size)
            st = os.lstat(ov)
            os.chown(fresh, st.st_uid, st.st_gid)
            os.chmod(fresh, stat.S_IMODE(st.st_mode))
            _fsync(fresh)
            swaps: list[tuple[Path, Path, Path | None]] = [(fresh, ov, None)]
        else:
            assert plan.upper is not None and plan.ovl_work is not None
            swaps = []
            for half in (plan.upper, plan.ovl_work):
                if half.parent != ov or not os.path.lexists(half):
                    continue
                _refuse_link(half, "directory")
                st = os.lstat(half)
                fresh = aside / f"new-{half.name}"
                fresh.mkdir()
                os.chown(fresh, st.st_uid, st.st_gid)
                os.chmod(fresh, stat.S_IMODE(st.st_mode))
                swaps.append((fresh, half, aside / f"old-{half.name}"))

        def reset() -> None:
            for fresh, half, old in swaps:
                if old is not None:
                    if not stat.S_ISDIR(_lstat_mode(half)):  # only ever the overlay's own directories
                        raise ComposerError(f"overlay merge: {half} is no longer a directory; not reset")
                    os.rename(half, old)  # into this run's directory, removed with it
                os.replace(fresh, half)
            _fsync(ov if plan.store is None else ov.parent)

        yield reset


@dataclasses.dataclass(frozen=True)
class MergeStep:
    """One step of a merge: what it does (`action`) and how the plan shows it (`text`)."""

    action: str  # extract | copy | apply | fsck | squash | verify | replace | reset
    text: str


@dataclasses.dataclass(frozen=True)
class MergePlan:
    """Everything a merge decided before it changes anything; its steps run in order.
    No steps: there is nothing to merge (`nothing` says why)."""

    medium: Medium
    overlay: Path
    kind: str  # "dm-snapshot" or "overlayfs"
    target: Path  # the image that gets replaced
    old_size: int
    steps: tuple[MergeStep, ...] = ()
    nothing: str = ""
    store: CowStore | None = None  # dm-snapshot: the COW store read from the overlay
    upper: Path | None = None  # overlayfs: its upper and work directories
    ovl_work: Path | None = None
    rootfs_in_squashfs: int | None = None  # size of LiveOS/rootfs.img inside squashfs.img, if any
    compression: Compression = Compression.XZ  # of the new squashfs.img
    scratch_root: Path | None = None
    overlay_bytes: int = 0

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.steps)


def plan_merge(
    media: Path,
    *,
    compression: Compression | None = None,
    overlay_name: str | None = None,
    workdir: Path | None = None,
) -> MergePlan:
    """Read the medium and its overlay, check everything that can be checked (use,
    origin, space, filesystem) and decide the steps; changes nothing."""
    m = find_medium(media, overlay_name)
    if m.overlay is None:
        raise ComposerError(f"{m.liveos}: no persistent overlay to merge")
    overlay = m.overlay
    target = m.squashfs or m.rootfs
    assert target is not None
    for p in (target, overlay):
        if p.is_file():
            refuse_if_in_use(p, "file")
    old_size = target.stat().st_size
    rootfs_in_sq = None
    comp = Compression.XZ
    if m.squashfs:
        listing = _squashfs_list(m.squashfs)
        rootfs_in_sq = listing.get("LiveOS/rootfs.img")
        comp_name, _ = _squashfs_info(m.squashfs)
        comp = compression or (Compression(comp_name) if comp_name in {c.value for c in Compression} else Compression.XZ)

    store = upper = ovl_work = None
    if overlay.is_file():
        kind = "dm-snapshot"
        if m.squashfs and rootfs_in_sq is None:
            raise ComposerError(f"{m.squashfs} holds no LiveOS/rootfs.img, so a COW overlay cannot belong to it")
        origin_size = rootfs_in_sq if rootfs_in_sq is not None else m.rootfs.stat().st_size  # type: ignore[union-attr]
        store = CowStore.read(overlay, origin_size=origin_size, follow_symlinks=False)
        if not store.exceptions:
            return MergePlan(m, overlay, kind, target, old_size, nothing=f"{overlay.name} holds no changes")
        apply = MergeStep(
            "apply",
            f"apply {len(store.exceptions)} chunks ({human(store.data_bytes())}) from {overlay.name} to a copy of rootfs.img",
        )
    else:
        kind = "overlayfs"
        upper, ovl_work = _upper_work(overlay)
        if _overlayfs_mounted(upper):
            raise ComposerError(f"{upper} is in use by a mounted overlayfs (a running live system?); merge it offline")
        check_upper(upper)
        if not any(upper.iterdir()):
            return MergePlan(m, overlay, kind, target, old_size, nothing=f"{upper} is empty")
        into = "rootfs.img" if (m.rootfs or rootfs_in_sq is not None) else "tree"
        apply = MergeStep("apply", f"apply the overlayfs upper dir {upper.relative_to(m.root)} to the {into}")

    if m.squashfs is None and m.rootfs is not None:
        _check_origin(m.rootfs, m.rootfs)
    steps = _merge_steps(m, target, overlay, apply, old_size=old_size, fsck=rootfs_in_sq is not None, comp=comp)
    scratch_root, ov_bytes = _merge_scratch(m, target, overlay, old_size=old_size, workdir=workdir)
    return MergePlan(
        m,
        overlay,
        kind,
        target,
        old_size,
        tuple(steps),
        store=store,
        upper=upper,
        ovl_work=ovl_work,
        rootfs_in_squashfs=rootfs_in_sq,
        compression=comp,
        scratch_root=scratch_root,
        overlay_bytes=ov_bytes,
    )


def _merge_steps(
    m: Medium, target: Path, overlay: Path, apply: MergeStep, *, old_size: int, fsck: bool, comp: Compression
) -> list[MergeStep]:
    """What a merge does, in order, as the plan shows it."""
    if m.squashfs:
        steps = [
            MergeStep("extract", f"extract {m.squashfs.name} ({human(old_size)})"),
            apply,
            *([MergeStep("fsck", "check the filesystem")] if fsck else []),
            MergeStep("squash", f"build a new squashfs.img ({comp})"),
            MergeStep("verify", "verify it (listing and content)"),
        ]
    else:
        steps = [MergeStep("copy", f"copy {target.name}"), apply, MergeStep("fsck", "check the filesystem")]
    return steps + [MergeStep("replace", f"replace {target.relative_to(m.root)}"), MergeStep("reset", f"reset {overlay.name}")]


def _merge_scratch(m: Medium, target: Path, overlay: Path, *, old_size: int, workdir: Path | None) -> tuple[Path, int]:
    """Where the merge works and the overlay's bytes, once the space for it is checked."""
    # First estimate: extracted data is at least as big as the squashfs; the new image
    # about the old one plus the overlay's data.
    ov_bytes = allocated_size(overlay) if overlay.is_file() else sum(st.st_blocks * 512 for _, st in _walk(overlay))
    estimate = 2 * old_size + ov_bytes if m.squashfs else allocated_size(target) + ov_bytes
    scratch_root = (workdir or m.liveos).resolve()
    if not scratch_root.is_dir():
        raise ComposerError(f"overlay merge: work directory {scratch_root} does not exist")
    _need_space(scratch_root, estimate, "merge")
    if not _same_fs(scratch_root, m.liveos):
        _need_space(m.liveos, old_size + ov_bytes, f"the new {target.name}")
    elif workdir is None and _fs_of(m.liveos) in _FOREIGN_FS:
        raise ComposerError(
            f"overlay merge: {m.liveos} is on {_fs_of(m.liveos)}, which cannot hold a Linux tree or sparse files; "
            "pass --workdir on a Linux filesystem with enough space"
        )
    return scratch_root, ov_bytes


def execute_merge(plan: MergePlan, *, level: int | None = None, repair: bool = False) -> None:
    """Run the plan's steps in a scratch directory under plan.scratch_root."""
    m = plan.medium
    assert plan.scratch_root is not None
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=plan.scratch_root, prefix=_SCRATCH_PREFIX)))
        tree = scratch / "tree"
        rootfs: Path | None = None  # the filesystem image being changed; None: the tree itself
        new: Path | None = None  # the new squashfs.img
        verified = False  # the new image checked as a whole: only then is the old one replaced
        reset: Callable[[], None] | None = None
        for step in plan.steps:
            if step.action == "extract":
                assert m.squashfs is not None
                info(f"overlay merge: extracting {m.squashfs}")
                run(["unsquashfs", "-n", "-d", tree, m.squashfs])
                rootfs = tree / "LiveOS" / "rootfs.img" if plan.rootfs_in_squashfs is not None else None
                if rootfs is not None:
                    _check_origin(rootfs, m.squashfs)
                # Next: verification copy of the rootfs (or tree) and the new image.
                built = allocated_size(rootfs) if rootfs else sum(st.st_blocks * 512 for _, st in _walk(tree))
                _need_space(
                    plan.scratch_root, built + plan.old_size + plan.overlay_bytes, "building and verifying the new squashfs.img"
                )
            elif step.action == "copy":
                rootfs = scratch / "rootfs.img"
                copy_sparse(plan.target, rootfs)
            elif step.action == "apply" and plan.store is not None:
                assert rootfs is not None
                n = apply_store(plan.store, plan.overlay, rootfs)  # (opens the overlay without following a link)
                info(f"overlay merge: applied {n} chunks to {rootfs.name}")
            elif step.action == "apply":
                assert plan.upper is not None
                if rootfs is not None:
                    with _loop_mounted(rootfs, scratch / "mnt") as mnt:
                        applied = apply_upper(plan.upper, mnt)
                    info(f"overlay merge: upper dir applied to rootfs.img: {applied}")
                else:
                    applied = apply_upper(plan.upper, tree)
                    info(f"overlay merge: upper dir applied to the tree: {applied}")
            elif step.action == "fsck":
                assert rootfs is not None
                _fsck(rootfs, repair=repair)
                verified = m.squashfs is None  # the image itself; a squashfs.img is verified below
            elif step.action == "squash":
                new = scratch / "squashfs.img"
                make_squashfs(tree, new, plan.compression, level=level, all_time=False)
            elif step.action == "verify":
                assert new is not None
                _verify_squashfs(new, rootfs, None if rootfs is not None else tree, scratch)
                verified = True
            elif step.action == "replace":
                replacement = new if new is not None else rootfs
                if replacement is None or not verified:
                    raise ComposerError(f"overlay merge: the new {plan.target.name} was not verified; nothing was changed")
                reset = stack.enter_context(_prepared_reset(plan))
                _replace_durably(replacement, plan.target)
                info(f"overlay merge: replaced {plan.target}")
            elif step.action == "reset":
                assert reset is not None
                reset()
                info(f"overlay merge: reset {plan.overlay.name}")
            else:
                raise AssertionError(f"unknown merge step {step.action}")


def merge_overlay(
    media: Path,
    *,
    dry_run: bool = False,
    compression: Compression | None = None,
    level: int | None = None,
    overlay_name: str | None = None,
    repair: bool = False,
    workdir: Path | None = None,
) -> MergeResult:
    """Fold the overlay into the medium's image (plan_merge, then execute_merge); see the
    module docstring for the rules. A dry run logs the plan and stops.

    workdir: where to extract and build (default: a scratch dir inside LiveOS/, which
    must then be a Linux filesystem able to hold the tree).
    """
    t0 = time.monotonic()
    plan = plan_merge(media, compression=compression, overlay_name=overlay_name, workdir=workdir)
    target, old_size = plan.target, plan.old_size
    if not plan.steps:
        info(f"overlay merge: {plan.nothing}; nothing to do")
        return MergeResult(plan.overlay.name, plan.kind, str(target), dry_run, time.monotonic() - t0, old_size, old_size, ())
    if dry_run:
        for s in plan.texts:
            info(f"overlay merge (dry run): would {s}")
        return MergeResult(plan.overlay.name, plan.kind, str(target), True, time.monotonic() - t0, old_size, old_size, plan.texts)
    execute_merge(plan, level=level, repair=repair)
    new_size = target.stat().st_size
    secs = time.monotonic() - t0
    info(f"overlay merge: {target.name} {human(old_size)} -> {human(new_size)} in {secs:.1f}s")
    return MergeResult(plan.overlay.name, plan.kind, str(target), False, secs, old_size, new_size, plan.texts)
