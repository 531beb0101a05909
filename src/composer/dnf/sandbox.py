"""Where dnf and rpm run: bubblewrap over the host (a private /tmp) or into a --dnf-root.

Host paths dnf needs (the tree, the work directory, the package cache, local
repositories) are bound in at their own paths, so every path means the same in and
out; during a transaction the tree gets /dev, /proc and /sys for scriptlets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from composer.run import ComposerError

# Top-level entries of a --dnf-root the sandbox shows (read-only); everything else is the
# host's paths bound in, or empty.
ROOT_DIRS = ("usr", "etc")


def root_sandbox(root: Path, rw: Sequence[Path] = (), ro: Sequence[Path] = ()) -> list[str]:
    """bwrap arguments running a program of `root` with host paths bound in at their own places.

    The root's /usr and /etc are shown read-only over an empty root (a tmpfs), so bwrap can
    make mount points for host paths anywhere else (/var/tmp/..., /var/cache/...).
    """
    argv = ["bwrap", "--tmpfs", "/"]
    for name in sorted(os.listdir(root)):
        path = root / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{name}"]  # usrmerge: /bin -> usr/bin
        elif name in ROOT_DIRS:
            argv += ["--ro-bind", str(path), f"/{name}"]
    for host in ("/etc/resolv.conf", "/etc/hosts"):
        # For remote repositories; the root has (empty) files to bind them on.
        if os.path.isfile(host) and (root / host.lstrip("/")).is_file():
            argv += ["--ro-bind", host, host]
    argv += [
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--ro-bind",
        "/sys",
        "/sys",
        "--tmpfs",
        "/tmp",
        "--dir",
        "/var/tmp",
        "--dir",
        "/run",
    ]
    for flag, src, dest in binds(rw, ro):
        if any(dest == Path("/", d) or dest.is_relative_to(Path("/", d)) for d in ROOT_DIRS):
            raise ComposerError(
                f"{dest}: lies in /{dest.parts[1]}, which --dnf-root {root} provides itself; "
                "move it elsewhere (e.g. below /var or /srv)"
            )
        if src.exists():
            argv += [flag, str(src), str(dest)]
    return argv


def binds(rw: Sequence[Path], ro: Sequence[Path]) -> list[tuple[str, Path, Path]]:
    """(bwrap flag, host path, place in the sandbox) for the paths: each at its
    resolved place, and at the place given too when that goes through a link (dnf is told
    the given path: a repository or cache reached through a link), parents before
    children so that a child's bind is not hidden by its parent's."""
    found: dict[Path, tuple[str, Path]] = {}
    for flag, paths in (("--bind", rw), ("--ro-bind", ro)):
        for p in paths:
            real = p.resolve()
            for dest in (real, Path(os.path.abspath(p))):
                found.setdefault(dest, (flag, real))
    return [(flag, src, dest) for dest, (flag, src) in sorted(found.items(), key=lambda b: len(b[0].parts))]


def host_sandbox(rw: Sequence[Path] = (), ro: Sequence[Path] = ()) -> list[str]:
    """bwrap arguments running the host's dnf with a /tmp of its own, a tmpfs that dies with
    it: libdnf makes /tmp/tmpdir.XXXXXX whatever TMPDIR says, and a build stopped while it
    exists would leave it. Host paths below /tmp are bound back in at their own places."""
    argv = ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/tmp"]
    for flag, src, dest in binds(rw, ro):
        if dest.is_relative_to("/tmp") and dest != Path("/tmp") and src.exists():
            argv += [flag, str(src), str(dest)]
    return argv


def sandbox(
    tree: Path, root: Path | None, rw: Sequence[Path], ro: Sequence[Path], *, transaction: bool, private_tmp: bool = True
) -> list[str]:
    """What runs dnf or rpm: bwrap over the host (private_tmp: dnf's) or into --dnf-root `root`, or
    nothing (the host's rpm); scriptlets get /dev, /proc and /sys in the tree during a transaction."""
    t = str(tree)
    prefix: list[str] = []
    if root is not None:
        prefix = root_sandbox(root, rw=rw, ro=ro)
    elif private_tmp:
        prefix = host_sandbox(rw=rw, ro=ro)
    elif transaction:
        prefix = ["bwrap", "--dev-bind", "/", "/"]
    if transaction:
        # The mounts live in a private namespace that dies with dnf, so none can outlive it.
        prefix += [
            "--dev",
            f"{t}/dev",
            "--proc",
            f"{t}/proc",
            # rpm sets the mode of a packaged /sys: on a tmpfs, never on the host's
            # sysfs; its contents are bound read-only below it.
            "--tmpfs",
            f"{t}/sys",
        ]
        for entry in sorted(os.listdir("/sys")):
            prefix += ["--ro-bind", f"/sys/{entry}", f"{t}/sys/{entry}"]
    if prefix:
        prefix += ["--unshare-pid", "--die-with-parent", "--"]
    return prefix
