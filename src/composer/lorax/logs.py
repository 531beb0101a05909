"""The logs lorax leaves next to --logfile, which Pungi's buildinstall phase reads.

lorax writes lorax.log (--logfile), pylorax.log (everything pylorax logs; Pungi greps it
for "Dependency check failed"), program.log (the programs it ran and their output),
dnf.log, and pkglists/<package> (the files of each installed package). composer logs
to one file (--logfile); after a build the first two are derived from it, dnf's own logs
are moved there from a private directory, and pkglists/ is written from the tree's rpm
database before the cleanup template removes it.

Every file is written under a fresh unpredictable name in its directory and renamed
over its final name: a symlink planted at pylorax.log (or any name here) is replaced,
never followed, so root never writes where a link points.

Run as a script (`python3 logs.py pkglists TREE DEST`, from a template's runcmd
on the host) it needs only the standard library: it may run outside composer's sys.path.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

# rpm's database in the tree (composer.dnf.RPMDB; repeated so that the script stands alone)
RPMDB = "/usr/lib/sysimage/rpm"
_CMD = re.compile(r"^(\[\s*[\d.]+s\] )?\$ ")
_STAMP = re.compile(r"^\[\s*[\d.]+s\] ")
_DEPSOLVE = re.compile(r"nothing provides|conflicts with|Problem( \d+)?:|cannot install|depsolv", re.IGNORECASE)


def write_new(dir_fd: int, name: str, data: bytes) -> None:
    """`name` in the directory `dir_fd` holds `data`, mode 0644: written to a fresh name
    (O_EXCL: nothing is followed) and renamed over `name`, so a link there is replaced."""
    tmp = f".{name}.{secrets.token_hex(8)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(tmp, dir_fd)
        raise


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def open_dir(path: Path, *, create: bool = False) -> int:
    """An fd of directory `path`; its last component is never a followed link (a
    pkglists/ planted as a link to another directory is refused)."""
    if create:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(
            e.errno,
            "not a directory (a link or a file where lorax writes a directory)"
            if os.path.islink(path) or not os.path.isdir(path)
            else e.strerror,
            str(path),
        ) from None


def _rpm_qa(tree: Path, queryformat: str, what: str, error: type[BaseException] = SystemExit) -> str:
    """`rpm -qa` over the tree's own database; a failure raises `error` naming what it was for."""
    proc = subprocess.run(
        ["rpm", f"--root={tree}", f"--dbpath={RPMDB}", "-qa", f"--queryformat={queryformat}"],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        raise error(f"{what}: rpm failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def write_pkglists(tree: Path, dest: Path) -> int:
    """pkglists/<name>: the files of each installed package, one per line (lorax's writepkglists)."""
    files: dict[str, list[str]] = {}
    for line in _rpm_qa(tree, "[%{=NAME}\t%{FILENAMES}\n]", "pkglists").splitlines():
        name, sep, path = line.partition("\t")
        if sep and path.startswith("/"):
            files.setdefault(name, []).append(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = open_dir(dest, create=True)
    except OSError as e:
        raise SystemExit(f"pkglists: {e.filename}: {e.strerror}") from None
    try:
        for name, paths in sorted(files.items()):
            if "/" in name or name.startswith("."):
                continue
            write_new(fd, name, "".join(f"{p}\n" for p in paths).encode())
    finally:
        os.close(fd)
    return len(files)


def write_packages_log(tree: Path) -> int:
    """/root/lorax-packages.log in the tree: every installed package as NAME-VERSION-RELEASE.ARCH,
    sorted, one a line (lorax's _write_package_log, after its package transaction)."""
    pkgs = sorted(set(_rpm_qa(tree, "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n", "lorax-packages.log").split()))
    try:
        fd = open_dir(tree / "root", create=True)
    except OSError as e:
        raise SystemExit(f"lorax-packages.log: {e.filename}: {e.strerror}") from None
    try:
        write_new(fd, "lorax-packages.log", ("\n".join(pkgs) + "\n").encode())
    finally:
        os.close(fd)
    return len(pkgs)


def package_files(tree: Path) -> dict[str, list[str]]:
    """NAME.ARCH: the package's files, for every package the tree's rpm database holds."""
    files: dict[str, list[str]] = {}
    current: list[str] = []
    for line in _rpm_qa(tree, "@%{NAME}.%{ARCH}\n[%{FILENAMES}\n]", "pkgsizes", RuntimeError).splitlines():
        if line.startswith("@"):
            current = files.setdefault(line[1:], [])
        elif line.startswith("/"):
            current.append(line)
    return files


def write_pkgsizes(tree: Path, files: dict[str, list[str]], logdir: Path, name: str) -> None:
    """lorax's original-pkgsizes.txt / final-pkgsizes.txt: `NAME.ARCH: BYTES` per package,
    the sizes (lstat) of its files the tree still has. lorax's os.path.exists follows links
    (a link to a missing file counts 0); here a link counts as itself."""
    lines = []
    for pkg in sorted(files, key=lambda p: tuple(p.rsplit(".", 1))):  # by name, then arch, as lorax
        size = 0
        for f in files[pkg]:
            try:
                size += os.lstat(str(tree) + f).st_size
            except OSError:
                pass
        lines.append(f"{pkg}: {size}\n")
    fd = open_dir(logdir)
    try:
        write_new(fd, name, "".join(lines).encode())
    finally:
        os.close(fd)


def read_log(path: Path) -> str:
    """The text of the log composer wrote (opened as set_logging opened it: no link followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace")


def derive_logs(logdir: Path, text: str, dnf_logs: Path | None = None) -> None:
    """pylorax.log and program.log in logdir from composer's log `text` (what --logfile
    holds), and dnf's logs moved there from dnf_logs."""
    fd = open_dir(logdir)
    try:
        write_new(fd, "pylorax.log", text.encode(errors="replace"))
        write_new(fd, "program.log", "".join(f"{line}\n" for line in program_lines(text)).encode(errors="replace"))
        for log in sorted(dnf_logs.iterdir()) if dnf_logs is not None and dnf_logs.is_dir() else ():
            if log.is_file() and not log.is_symlink():
                write_new(fd, log.name, log.read_bytes())
    finally:
        os.close(fd)


def error_lines(error: str) -> str:
    """What lorax.log and pylorax.log end with when the build failed: the error, with
    lorax's wording for a failed depsolve (what Pungi looks for in pylorax.log)."""
    tail = f"ERROR: {error}\n"
    if _DEPSOLVE.search(error):
        tail += f"Dependency check failed: {error}\n"
    return tail


def program_lines(text: str) -> list[str]:
    """program.log: the commands composer ran, with their multi-line arguments and output."""
    program: list[str] = []
    in_cmd = False
    for line in text.splitlines():
        if _CMD.match(line):
            in_cmd = True
            program.append(_STAMP.sub("", line, count=1))
        elif in_cmd and not _STAMP.match(line) and not line.startswith(("/", "template ")):
            program.append(line)  # a command's multi-line argument or output
        else:
            in_cmd = False
    return program


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "pkglists":
        n = write_pkglists(Path(argv[1]), Path(argv[2]))
        print(f"pkglists: {n} packages", file=sys.stderr)
        return 0
    if len(argv) == 2 and argv[0] == "packages-log":
        n = write_packages_log(Path(argv[1]))
        print(f"lorax-packages.log: {n} packages", file=sys.stderr)
        return 0
    print("usage: loraxlogs.py pkglists TREE DEST | packages-log TREE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
