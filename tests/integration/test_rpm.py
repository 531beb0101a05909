"""composer as an RPM (issue 22, item 4): `make rpm` runs rpmbuild on packaging/composer.spec,
then dnf installs composer-lorax from that repository and the Fedora-shaped product's into a
fresh root, as Koji makes a runroot buildroot (dnf --installroot, the product's repositories
only), and `lorax` runs there. Needs root (chroot)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUILD, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fedora_repo() -> Path:
    from testproduct.fedoraproduct import build_fedoraproduct

    return build_fedoraproduct(BUILD / "fedoraproduct")


@pytest.fixture(scope="module")
def rpms(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("rpm")
    proc = subprocess.run(["make", "-C", str(ROOT), "rpm", f"BUILD={build}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    repo = build / "rpm"
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    return repo


def dnf_installroot(tree: Path, repos: dict[str, Path], *packages: str) -> subprocess.CompletedProcess[str]:
    """dnf 4 as Koji's buildroot makes a root: only the given repositories, no weak deps."""
    argv = ["dnf", f"--installroot={tree}", "--setopt=reposdir=/nonexistent", "--nogpgcheck", "-y", "--quiet"]
    argv += [f"--repofrompath={name},file://{path}" for name, path in repos.items()]
    argv += ["--setopt=install_weak_deps=False", "--releasever=43", "install", *packages]
    return subprocess.run(argv, capture_output=True, text=True)


def test_rpms_built(rpms):
    names = sorted(p.name for p in (rpms / "noarch").glob("*.rpm"))
    assert names == ["composer-0.1.0-1.noarch.rpm", "composer-lorax-0.1.0-1.noarch.rpm"], names
    files = subprocess.run(["rpm", "-qpl", str(rpms / "noarch" / names[1])], capture_output=True, text=True, check=True)
    assert "/usr/bin/lorax" in files.stdout.split()


@pytest.fixture(scope="module")
def buildroot(rpms, fedora_repo, tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("chroot into the buildroot needs root")
    tree = tmp_path_factory.mktemp("buildroot") / "root"
    # testproduct-setup: the product's base system (Debian's Essential set), which a Koji
    # buildroot gets from its build group.
    proc = dnf_installroot(tree, {"product": fedora_repo, "composer": rpms}, "composer-lorax", "testproduct-setup")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tree


def test_lorax_in_buildroot(buildroot):
    tree = buildroot
    q = subprocess.run(["rpm", f"--root={tree}", "-q", "composer", "composer-lorax"], capture_output=True, text=True)
    assert q.returncode == 0, q.stdout + q.stderr
    run = subprocess.run(
        ["chroot", str(tree), "lorax", "--help"], capture_output=True, text=True, env={"PATH": "/usr/bin:/usr/sbin"}
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--sharedir" in run.stdout and "--rootfs-type" in run.stdout, run.stdout[:2000]
    # the Python dependencies are the product's packages, not this host's
    imp = subprocess.run(
        ["chroot", str(tree), "python3", "-c", "import composer, mako, pykickstart, productmd; print(composer.__file__)"],
        capture_output=True,
        text=True,
    )
    assert imp.stdout.strip() == "/usr/lib/python3/dist-packages/composer/__init__.py", imp.stderr[-2000:]


# A runroot task's shape: the buildroot with /dev, /proc, /sys and a /tmp of its own (mock and
# Koji's runroot mount these), the compose's repository and lorax's templates bound in.
RUNROOT = """set -e
t=$1; shift
mkdir -p "$t/mnt/repo" "$t/mnt/templates" "$t/mnt/out"
# the root a mount point of its own, as mock's: bubblewrap (composer's dnf and dracut) needs that
mount --make-rprivate /; mount --bind "$t" "$t"
mount --rbind /dev "$t/dev"; mount -t proc proc "$t/proc"; mount --rbind /sys "$t/sys"
mount -t tmpfs tmpfs "$t/tmp"
mount --bind "$REPO" "$t/mnt/repo"; mount --bind "$TEMPLATES" "$t/mnt/templates"
exec chroot "$t" "$@"
"""


def in_runroot(tree: Path, repo: Path, templates: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin", "REPO": str(repo), "TEMPLATES": str(templates)}
    cmd = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", RUNROOT, "runroot", str(tree), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.mark.soak  # the stock-template build CI runs in test_lorax_stock, here inside the buildroot
def test_lorax_builds_in_buildroot(buildroot, fedora_repo):
    """Pungi's argv (as scripts/lorax-oracle gives it) with lorax's stock templates, run by the
    buildroot's lorax in a runroot: the media Pungi would copy back."""
    from tests.integration.test_lorax_stock import STOCK

    (buildroot / "mnt").mkdir(exist_ok=True)
    (buildroot / "mnt/lorax.conf").write_text("[compression]\ntype = lz4\n")  # lz4: CI time
    proc = in_runroot(
        buildroot,
        fedora_repo,
        STOCK,
        "lorax",
        *("-p", "Fedora", "-v", "43", "-r", "43", "-s", "file:///mnt/repo", "--buildarch", "x86_64"),
        *("--isfinal", "--nomacboot", "--noupgrade", "--volid", "Fedora-43 Everything.x86_64"),
        *("--sharedir", "/mnt/templates", "-c", "/mnt/lorax.conf", "--logfile", "/mnt/out/logs/lorax.log", "/mnt/out/result"),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = buildroot / "mnt/out/result"
    for rel in ("images/boot.iso", "images/install.img", "images/efiboot.img", ".treeinfo", ".discinfo"):
        assert (out / rel).is_file(), rel
    assert (buildroot / "mnt/out/logs/pkglists").is_dir()
