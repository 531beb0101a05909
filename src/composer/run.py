"""The one way composer runs external commands, reports progress and finds its data."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import glob
import importlib.resources
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# Where templates/ and share/ live: the package's own data (installed or editable),
# or an override for packagers and tests.
DATADIR = Path(os.environ.get("COMPOSER_DATADIR") or str(importlib.resources.files("composer") / "data"))


class ComposerError(Exception):
    """An error the user can act on; the CLI prints it as one line, no traceback."""


class CommandError(ComposerError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip())
        shown = self.argv
        if os.path.basename(shown[0]) == "bwrap" and "--" in shown:
            # The sandbox's dozen options hide the command that failed; the log has them.
            shown = shown[shown.index("--") + 1 :]
        msg = f"command failed (exit {returncode}): {shlex.join(shown)}"
        if tail:
            msg += f": {tail}"
        super().__init__(redact(msg))

    @property
    def reason(self) -> str:
        """The line of stderr that says what went wrong (the last that looks like an error)."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_WORDS.search(line)]
        return (errors or lines or [f"exit {self.returncode}"])[-1]


_ERROR_WORDS = re.compile(r"\b(error|fatal|failed|cannot|can't|not found|no such|no space|denied)\b", re.I)


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


# Where the host's system programs are (chroot, which stock templates run; mkfs.*, sfdisk): an
# ordinary user's PATH often lacks them (Debian's default for users, an ssh session's, as on a
# builder Pungi logs in to), root's has them.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def sbin_on_path() -> None:
    """Append the sbin directories PATH lacks (composer's children inherit it)."""
    path = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d]
    os.environ["PATH"] = os.pathsep.join([*path, *(d for d in SBIN_DIRS if d not in path)])


def _die_with_parent() -> None:
    """In the child: be killed if composer dies, even by SIGKILL, so nothing is left running."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_VERBOSE = bool(os.environ.get("COMPOSER_VERBOSE"))
_LOGFD: int | None = None
_LOGNAME = ""
_T0 = time.monotonic()

# Credentials in a URL's userinfo (scheme://user:password@host/): masked wherever text
# leaves composer (console, log, error lines). Other secrets (a .repo file's password=)
# are registered by whoever reads them.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]+@")
_SECRETS: set[str] = set()
MASK = "***"


def register_secret(value: str) -> None:
    """From now on `value` is masked in everything composer prints or logs."""
    if len(value) >= 3:  # a one- or two-character "secret" would mask half of every line
        _SECRETS.add(value)


def redact(text: str) -> str:
    """text with URL credentials and registered secrets masked."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def open_for_append(path: Path, option: str) -> int:
    """An fd appending to the regular file `path`, created 0644 if missing. A final
    symlink is never followed (a link planted where root writes its log would make root
    write the link's target), and a FIFO, device or directory is refused, not waited on."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        why = {
            errno.ELOOP: "is a symbolic link (composer never writes through a link)",
            errno.ENXIO: "is a FIFO (give a regular file)",
            errno.EISDIR: "is a directory",
        }.get(e.errno or 0, e.strerror or str(e))
        raise ComposerError(f"{option} {path}: {why}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or _on_pseudo_fs(fd):
        os.close(fd)
        raise ComposerError(f"{option} {path}: not a regular file (give a file on a real file system)")
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_WRONLY | os.O_APPEND)
    return fd


def _on_pseudo_fs(fd: int) -> bool:
    """On /proc or /sys, whose "regular files" are kernel interfaces, not logs."""
    dev = os.fstat(fd).st_dev
    return any(os.path.isdir(d) and os.stat(d).st_dev == dev for d in ("/proc", "/sys"))


def set_logging(*, verbose: bool | None = None, logfile: Path | None = None, option: str = "--logfile") -> None:
    global _VERBOSE, _LOGFD, _LOGNAME
    if verbose is not None:
        _VERBOSE = verbose
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fd = open_for_append(logfile, option)
        if _LOGFD is not None:
            os.close(_LOGFD)
        _LOGFD, _LOGNAME = fd, f"{option} {logfile}"


def stop_logging() -> None:
    """Close --logfile (tests that run several command lines in one process)."""
    global _LOGFD
    if _LOGFD is not None:
        os.close(_LOGFD)
        _LOGFD = None


def _logline(line: str) -> None:
    global _LOGFD
    if _LOGFD is None:
        return
    try:
        os.write(_LOGFD, (line + "\n").encode(errors="replace"))
    except OSError as e:
        # A full disk must not turn into a traceback in the middle of a cleanup: say it once.
        os.close(_LOGFD)
        _LOGFD = None
        print(f"composer: warning: {_LOGNAME}: {e.strerror or e}; no more is logged there", file=sys.stderr, flush=True)


def info(msg: str) -> None:
    """A progress line: elapsed time since start, then the message."""
    line = redact(f"[{time.monotonic() - _T0:7.1f}s] {msg}")
    print(line, file=sys.stderr, flush=True)
    _logline(line)


def debug(msg: str) -> None:
    msg = redact(msg)
    _logline(msg)
    if _VERBOSE:
        print(msg, file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """User + system time of composer and every command it waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_child_rss_mib() -> float:
    """The largest child process so far, in MiB (getrusage keeps the maximum, not a sum)."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


@dataclasses.dataclass
class Span:
    """One measured stretch of a compose: wall and CPU time since it began."""

    start: float = dataclasses.field(default_factory=time.monotonic)
    cpu0: float = dataclasses.field(default_factory=cpu_seconds)
    recorded: bool = False  # its figures are in a Metrics already (stage() records it once)

    def wall_s(self) -> float:
        return round(time.monotonic() - self.start, 2)

    def cpu_s(self) -> float:
        return round(cpu_seconds() - self.cpu0, 2)


@dataclasses.dataclass
class Metrics:
    """What a compose measured, in the order it measured it: the manifest, the summary line
    and `make bench` read these. Keys are stage names (e.g. install, dracut, squashfs) or,
    for sizes, what was measured (tree_installed, initramfs-KVER, images/boot.iso)."""

    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # wall seconds
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # composer's and its commands' seconds
    peak_rss_mib: dict[str, float] = dataclasses.field(default_factory=dict)  # largest child process so far

    def record(self, key: str, span: Span, *, usage: bool = False) -> None:
        """The wall time of `span` as timings[key]; usage: its CPU time and the peak RSS too."""
        self.timings[key] = span.wall_s()
        if usage:
            self.cpu[key] = span.cpu_s()
            self.peak_rss_mib[key] = peak_child_rss_mib()
        span.recorded = True


@contextlib.contextmanager
def stage(name: str, metrics: Metrics | None = None, *, key: str | None = None, usage: bool = False) -> Iterator[Span]:
    """Announce a pipeline stage and report how long it took. With `metrics`, its time goes
    there as `key` (the name unless given; usage: CPU and peak RSS too) when the block ends,
    unless the block recorded it itself (metrics.record(key, span), e.g. before a manifest
    that lists it)."""
    info(f"{name} ...")
    span = Span()
    try:
        yield span
    except OSError as e:
        # e.g. ENOSPC from a copy in Python: say in which stage, as one line.
        where = f" ({e.filename})" if e.filename else ""
        raise ComposerError(f"{name}: {e.strerror or e}{where}") from e
    if metrics is not None and not span.recorded:
        metrics.record(key or name, span, usage=usage)
    info(f"{name}: done in {time.monotonic() - span.start:.1f}s")


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = False,
    check: bool = True,
    quiet: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (never a shell string). Output goes to the log; stderr is kept for errors.

    capture=True returns stdout in the result instead of logging it.
    """
    args = [os.fspath(a) for a in argv]
    if shutil.which(args[0]) is None and not os.path.isabs(args[0]):
        raise ComposerError(f"required program not found: {args[0]} (needed for: {shlex.join(args)})")
    debug(f"$ {shlex.join(args)}")
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        child = subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError as e:
        raise ComposerError(f"cannot run {shlex.join(args)}: {e.strerror}") from None
    try:
        stdout, stderr = child.communicate(input)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): never leave the child running behind us.
        child.kill()
        child.wait()
        raise
    proc = subprocess.CompletedProcess(args, child.returncode, stdout, stderr)
    err = proc.stderr.decode(errors="replace")
    if not capture:
        out = proc.stdout.decode(errors="replace")
        if out.strip() and not quiet:
            debug(out.rstrip())
    if err.strip() and not quiet:
        debug(err.rstrip())
    if check and proc.returncode != 0:
        if not capture:
            err = proc.stdout.decode(errors="replace") + err
        raise CommandError(args, proc.returncode, err)
    return proc


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise ComposerError(f"required program(s) not found: {', '.join(missing)}")


# Inside every directory locked_mkdir makes: what lets remove_stale tell a dead composer's
# directory from anybody else's that merely has a similar name.
LOCK_MARKER = ".composer-lock"


def locked_mkdir(path: Path) -> int:
    """Create directory `path` and return an fd holding an exclusive flock on it.

    The lock lives as long as the fd, i.e. at most as long as this process (even after
    SIGKILL), so remove_stale() can tell a live build's directory from a dead one's.
    The directory gets its final name only once it is locked and marked, so a concurrent
    scan never sees it unlocked.
    """
    path = Path(path)
    nascent = path.parent / f".nascent-{secrets.token_hex(6)}-{path.name}"
    nascent.mkdir()
    fd = os.open(nascent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        marker = os.open(LOCK_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        os.write(marker, f"composer pid {os.getpid()}\n".encode())
        os.close(marker)
        nascent.rename(path)
    except BaseException:
        os.close(fd)
        shutil.rmtree(nascent, ignore_errors=True)
        raise
    return fd


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return time.time()


def _made_by_composer(fd: int) -> bool:
    """Is the directory open at fd one that locked_mkdir made, as this user?"""
    if os.fstat(fd).st_uid != os.geteuid():
        return False
    for marker in (LOCK_MARKER, OUTPUT_MARKER):  # an output's old copy (.NAME.old-*) has the latter
        try:
            st = os.stat(marker, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            return True
    return False


def _unlocked(fd: int) -> bool:
    """Locked by nobody (and now by us): no live build owns the directory."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_stale(parent: Path, pattern: str) -> list[Path]:
    """Delete directories matching `pattern` in `parent` that a killed composer left: made
    by locked_mkdir as this user (its marker inside) and locked by no live process.
    Anything else with a similar name is somebody else's and stays."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    # .nascent-*: killed inside locked_mkdir's split second before the rename (a minute
    # old, so never one that another build is about to lock).
    nascent = {d for d in parent.glob(".nascent-*") if time.time() - _mtime(d) > 60}
    for d in sorted({*parent.glob(pattern), *nascent}):
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or not a directory
        try:
            if _made_by_composer(fd) and _unlocked(fd):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        finally:
            os.close(fd)
    if removed:
        debug(f"removed leftovers of killed builds: {', '.join(map(str, removed))}")
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


# Written into an output directory when it is complete: --force replaces only a
# directory that holds it, i.e. one composer made, never a user's directory.
OUTPUT_MARKER = ".composer-output"


def output_path(final: Path) -> Path:
    """The absolute path of an output: its parent resolved, its own name kept, so a
    symlink at `final` is the link itself, never its target."""
    final = Path(os.path.abspath(final))
    return Path(os.path.realpath(final.parent)) / final.name if final.name else final


def check_replaceable(final: Path, *, force: bool, option: str = "OUTDIR") -> None:
    """An existing `final` may be replaced only with force, and only if composer made it."""
    if not os.path.lexists(final):
        return
    if os.path.islink(final):
        raise ComposerError(
            f"{option} {final} is a symbolic link (to {os.readlink(final)}): composer never "
            "writes through a link to replace its target; remove the link or choose another "
            f"{option}"
        )
    if not final.is_dir():
        raise ComposerError(f"{option} {final}: exists and is not a directory")
    if not force:
        raise ComposerError(f"output directory {final} exists (use --force to replace it)")
    if not (final / OUTPUT_MARKER).is_file():
        raise ComposerError(
            f"{option} {final}: --force replaces only a directory composer made (it has no "
            f"{OUTPUT_MARKER}); remove it yourself or choose another {option}"
        )


def _locked_scratch(final: Path) -> tuple[Path, int]:
    """A fresh `.NAME.partial-PID` directory beside `final`, locked (see locked_mkdir);
    the ones of killed runs are removed first."""
    remove_stale(final.parent, f".{glob.escape(final.name)}.partial-*")
    # An unpredictable name: nobody can plant a link or a directory there beforehand.
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(6)}"
    return tmp, locked_mkdir(tmp)


@contextlib.contextmanager
def scratch_beside(final: Path) -> Iterator[Path]:
    """A locked scratch directory beside `final` (so results are renamed, never copied),
    removed on exit; one left by a killed run (SIGKILL) is removed by the next run."""
    tmp, fd = _locked_scratch(final)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: Path, *, force: bool = False, require_marker: bool = True) -> Iterator[Path]:
    """Yield a scratch directory beside `final`; it becomes `final` only on success.

    With force, an existing `final` is replaced only after the new one is complete,
    so a failed build never destroys the previous output, and only if it is a
    directory composer made (OUTPUT_MARKER, written on success; require_marker=False
    for composer's own scratch outputs). A symlink at `final` is refused, never
    followed. Scratch directories of killed builds (SIGKILL) are removed on the next run.
    """
    final = output_path(final)
    if require_marker or not force or os.path.islink(final):
        check_replaceable(final, force=force)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, f".{glob.escape(final.name)}.old-*")
    tmp, fd = _locked_scratch(final)
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text("made by composer; `--force` may replace this directory\n")
        (tmp / LOCK_MARKER).unlink()  # the output marker proves it composer's from now on
        _put_in_place(tmp, final, force=force, require_marker=require_marker)
    except BaseException:
        # Whatever failed, the body or the final check (another build's output appeared
        # meanwhile): nothing of this run stays behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _put_in_place(tmp: Path, final: Path, *, force: bool, require_marker: bool) -> None:
    """Rename the complete `tmp` to `final`, replacing an old `final` only as atomic_dir says."""
    if not os.path.lexists(final):
        tmp.rename(final)
        return
    # Checked again: a link or a foreign directory may have appeared meanwhile.
    if require_marker or os.path.islink(final):
        check_replaceable(final, force=force)
    # Swap in one step where the kernel can, so `final` never disappears.
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(6)}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)


_HOST_TMP_VARS = ("TMPDIR", "TMP", "TEMP", "TEMPDIR")


def systemctl_each(tree: Path, verb: str, units: Sequence[str], going_on_as: str) -> None:
    """`systemctl --root=TREE VERB UNIT` (offline: links only), one unit at a time; a unit
    that fails (one that does not exist) is reported and skipped, as lorax's templates and
    anaconda's `services` command do (going_on_as: whose way it is)."""
    base = ["systemctl", f"--root={os.path.abspath(tree)}", "--quiet", verb]
    for unit in units:
        try:
            run([*base, unit])
        except ComposerError as e:
            info(f"systemctl {verb} {unit}: failed, going on as {going_on_as} does ({str(e).splitlines()[0]})")


def in_tree_argv(
    tree: Path,
    argv: Sequence[str],
    *,
    binds: Sequence[tuple[Path, str]] = (),
    ro_binds: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """argv that runs `argv` with `tree` as its root, with /proc, /sys and /dev.

    bubblewrap mounts them in a private mount namespace that dies with the process,
    so no mount can outlive the command, whatever happens to us (even SIGKILL).
    Extra binds land under /tmp (a tmpfs) or other existing dirs, never creating
    mount points in the tree.
    """
    out = [
        "bwrap",
        "--bind",
        str(tree),
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind",
        "/sys",
        "/sys",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "--unshare-pid",
        "--die-with-parent",
        "--setenv",
        "PATH",
        "/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv",
        "HOME",
        "/root",
        "--setenv",
        "LC_ALL",
        "C.UTF-8",
        # The host's temporary directory does not exist in the tree (dracut: "realpath: /srv/tmp:
        # No such file or directory" when Koji or CI sets TMPDIR): the tree's own defaults apply.
        *(a for var in _HOST_TMP_VARS for a in ("--unsetenv", var)),
    ]
    for src, dst in binds:
        out += ["--bind", str(src), dst]
    for src, dst in ro_binds:
        out += ["--ro-bind", str(src), dst]
    return out + ["--", *argv]
