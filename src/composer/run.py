"""The one way composer runs external commands, reports progress and finds its data."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# Where templates/ and share/ live: the source checkout (editable install) or
# an override for packagers.
DATADIR = Path(os.environ.get("COMPOSER_DATADIR", Path(__file__).resolve().parents[2]))


class ComposerError(Exception):
    """An error the user can act on; the CLI prints it as one line, no traceback."""


class CommandError(ComposerError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip())
        msg = f"command failed (exit {returncode}): {shlex.join(self.argv)}"
        if tail:
            msg += f": {tail}"
        super().__init__(msg)


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be killed if composer dies, even by SIGKILL, so nothing is left running."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_VERBOSE = bool(os.environ.get("COMPOSER_VERBOSE"))
_LOGFILE: Path | None = None
_T0 = time.monotonic()


def set_logging(*, verbose: bool | None = None, logfile: Path | None = None) -> None:
    global _VERBOSE, _LOGFILE
    if verbose is not None:
        _VERBOSE = verbose
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        _LOGFILE = logfile


def _logline(line: str) -> None:
    if _LOGFILE is not None:
        with _LOGFILE.open("a") as f:
            f.write(line + "\n")


def info(msg: str) -> None:
    """A progress line: elapsed time since start, then the message."""
    line = f"[{time.monotonic() - _T0:7.1f}s] {msg}"
    print(line, file=sys.stderr, flush=True)
    _logline(line)


def debug(msg: str) -> None:
    _logline(msg)
    if _VERBOSE:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Announce a pipeline stage and report how long it took."""
    info(f"{name} ...")
    start = time.monotonic()
    yield
    info(f"{name}: done in {time.monotonic() - start:.1f}s")


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


@contextlib.contextmanager
def atomic_dir(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside `final`; it becomes `final` only on success.

    With force, an existing `final` is replaced only after the new one is complete,
    so a failed build never destroys the previous output.
    """
    final = final.resolve()
    if final.exists() and not force:
        raise ComposerError(f"output directory {final} exists (use --force to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


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
        "bwrap", "--bind", str(tree), "/",
        "--proc", "/proc", "--dev", "/dev", "--ro-bind", "/sys", "/sys",
        "--tmpfs", "/tmp", "--tmpfs", "/run",
        "--unshare-pid", "--die-with-parent",
        "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "HOME", "/root",
        "--setenv", "LC_ALL", "C.UTF-8",
    ]
    for src, dst in binds:
        out += ["--bind", str(src), dst]
    for src, dst in ro_binds:
        out += ["--ro-bind", str(src), dst]
    return out + ["--", *argv]
