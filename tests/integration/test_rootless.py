"""Issue 13, point 2: an ordinary user builds the same images as root, and they boot.

A user made for the purpose (no sudo, no group with special rights, only a range in
/etc/subuid and /etc/subgid, as useradd gives every new user) runs `composer runtime`
and `composer boot-iso` of the test product with the options and SOURCE_DATE_EPOCH of
the session's boot.iso media (tests/conftest.py bootiso_build, composed by root): every
image is byte-identical to root's, ownership and modes inside them included, the output
files belong to the user, and the user's big initrd boots to the marker under
`composer verify` run by the user. The user's runtime caches its tree in the user's own
cache (~/.cache/composer), so its boot-iso installs no package again.

The user installs composer as a user would: a copy of this checkout (as from `git clone`),
`python3 -m venv ~/composer` with Debian's python3 and `pip install` of the copy and of its
`extras/lorax`, the dependencies from the package index pip is configured with; then runs the
`composer` and `lorax` commands the venv puts on PATH.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder_user import PATH, as_user, ordinary_user, pip_install, user_command
from tests.conftest import MEDIA_EPOCH
from tests.integration.test_reproducible import files_below, first_difference, with_extra

pytestmark = pytest.mark.slow

USER_PREFIX = "composer-rl-"  # + the pid of the test session that made it


def user_popen(user: pwd.struct_passwd, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    # setpriv, composer and unshare exec in turn: the signal reaches composer itself.
    cmd, cmd_env = user_command(user, argv, env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/", env=cmd_env)


def compose_as(user, env, base: Path, command: str, repo: Path, out: Path) -> float:
    """`composer COMMAND` as the user with the options of tests/conftest.py compose_media into
    `out`; the user's default cache (~/.cache/composer). Returns the seconds it took."""
    work = base / f"work-{command}"
    work.mkdir()
    shutil.chown(work, user.pw_uid, user.pw_gid)
    t0 = time.monotonic()
    proc = as_user(
        user,
        [
            "composer",
            "--logfile",
            str(base / f"{command}.log"),
            command,
            "--product",
            "TestProduct",
            "--version",
            "1",
            "--source",
            f"file://{repo}",
            "--nogpgcheck",
            "--rootfs-type",
            "ext4",
            "--osmin",
            "--compression",
            "lz4",
            "--source-date-epoch",
            str(MEDIA_EPOCH),
            "--workdir",
            str(work),
            str(out),
        ],
        env,
        timeout=1800,
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"composer {command} as {user.pw_name} failed:\n{proc.stderr[-4000:]}"
    assert list(work.iterdir()) == [], "the work directory was not cleaned up"
    print(f"\ncomposer {command} as {user.pw_name}: {seconds:.1f}s")
    return seconds


@pytest.fixture(scope="module")
def rootless(bootiso_build, testproduct_repo) -> Iterator[tuple[pwd.struct_passwd, dict[str, str], Path, Path]]:
    """(user, env, base, repo): base/runtime and base/media/out composed by the user with the
    composer it pip-installed (env: its PATH)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test creates an ordinary user with useradd")
    for tool in ("useradd", "usermod", "userdel", "setpriv", "unshare", "newuidmap", "newgidmap"):
        assert shutil.which(tool), f"{tool} not found (scripts/setup-host installs it)"
    with ordinary_user(USER_PREFIX) as user:
        # A directory the user owns: pytest's own tmp dirs are 0700 root.
        base = Path(tempfile.mkdtemp(prefix="composer-rootless-", dir="/var/tmp"))
        try:
            base.chmod(0o755)
            shutil.chown(base, user.pw_uid, user.pw_gid)
            env = {"PATH": f"{pip_install(user, base)}:{PATH}"}
            repo = testproduct_repo
            if as_user(user, ["test", "-r", str(repo / "repodata/repomd.xml")], {}).returncode != 0:
                # e.g. a clone under /root: the user gets a copy (same packages, same bytes)
                repo = base / "repo"
                shutil.copytree(testproduct_repo, repo)
            for argv in (["composer", "runtime", "--help"], ["lorax", "--help"]):
                check = as_user(user, argv, env)
                assert check.returncode == 0, check.stderr
            compose_as(user, env, base, "runtime", repo, base / "runtime")
            (base / "media").mkdir()
            shutil.chown(base / "media", user.pw_uid, user.pw_gid)
            compose_as(user, env, base, "boot-iso", repo, base / "media/out")
            yield user, env, base, repo
        finally:
            # The work trees were owned by subordinate ids; root removes anything left.
            shutil.rmtree(base, ignore_errors=True)


def _differences(a: dict[str, Path], b: dict[str, Path], pairs: list[tuple[str, str]]) -> list[str]:
    out = []
    for ra, rb in pairs:
        if first_difference(a[ra], b[rb]) is not None:
            out.append(
                f"{ra}: first difference at offset {first_difference(a[ra], b[rb])} "
                f"(sizes {a[ra].stat().st_size} and {b[rb].stat().st_size})"
            )
    return out


def test_boot_iso_is_byte_identical_to_roots(rootless, bootiso_build):
    user, _, base, _ = rootless
    ours, roots = files_below(with_extra(base / "media")), files_below(with_extra(bootiso_build))
    assert sorted(ours) == sorted(roots), "the user's and root's builds made different files"
    # Also the reproducibility check (test_reproducible.py): two fresh installs, other paths and times.
    for must in (
        "out/images/boot.iso",
        "out/images/install.img",
        "out/images/efiboot.img",
        "out/images/pxeboot/initrd.img",
        "extra/squashfs-root/LiveOS/rootfs.img",
        "extra/squashfs-root/LiveOS/osmin.img.gz",
        "extra/big-initrd.img",
    ):
        assert must in ours, must
    differ = _differences(ours, roots, [(rel, rel) for rel in sorted(ours)])
    assert not differ, "not identical to root's build:\n" + "\n".join(differ)
    # The outputs belong to the user, with root's modes.
    for rel, path in ours.items():
        if rel.startswith("out/"):
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), rel
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(roots[rel].stat().st_mode), rel


def roots_big_initrd(bootiso_build: Path, dest: Path) -> Path:
    """The big initrd `composer runtime` makes, from root's media: their initrd is the same
    dracut initramfs with a memory-check cpio appended (outputs/ram.py), which the
    runtime's lacks; then squashfs.img and the command line, as runtime.py appends them."""
    from composer.config import RootfsType
    from composer.images.cpio import read_newc
    from composer.outputs.bigimage import make_big_initrd
    from composer.outputs.ram import MEMCHECK_CONF
    from composer.pipelines.runtime import runtime_cmdline

    media_initrd = bootiso_build / "out/images/pxeboot/initrd.img"
    last = read_newc(media_initrd)[-1]
    assert [m.name for m in last.members][-1] == MEMCHECK_CONF, last
    initramfs = dest.with_name("initramfs.img")
    with media_initrd.open("rb") as f:
        initramfs.write_bytes(f.read(last.offset))  # the initramfs and its padding to 4 bytes
    make_big_initrd(
        initramfs, bootiso_build / "out/images/install.img", runtime_cmdline(RootfsType.EXT4), dest, mtime=MEDIA_EPOCH
    )
    return dest


def test_runtime_is_byte_identical_to_roots(rootless, bootiso_build, tmp_path):
    """The runtime's images against the same images of root's media: install.img is the
    same squashfs.img, the kernel the same, the big initrd made of root's parts."""
    user, _, base, _ = rootless
    roots = files_below(with_extra(bootiso_build)) | {"big": roots_big_initrd(bootiso_build, tmp_path / "big.img")}
    out = base / "runtime"
    ours = {rel: out / rel for rel in ("images/install.img", "images/pxeboot/vmlinuz", "images/pxeboot/initrd.img")}
    pairs = [
        ("images/install.img", "out/images/install.img"),
        ("images/pxeboot/vmlinuz", "out/images/pxeboot/vmlinuz"),
        ("images/pxeboot/initrd.img", "big"),
    ]
    differ = _differences(ours, roots, pairs)
    assert not differ, "not identical to root's build:\n" + "\n".join(differ)
    for path in out.rglob("*"):
        assert path.lstat().st_uid == user.pw_uid, f"{path} is not the user's"


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True).stdout


def test_owners_inside_the_image_are_the_packages(rootless):
    """Not only equal to root's: a file of a package with another group keeps it and its
    setgid bit (without the subordinate ids it would be the user's, i.e. root's)."""
    base = rootless[2]
    image = base / "media/extra/squashfs-root/LiveOS/rootfs.img"
    with_extra(base / "media")
    groups = {f[0]: int(f[2]) for line in _debugfs(image, "cat /etc/group").splitlines() if len(f := line.split(":")) > 2}
    assert groups.get("shadow", 0) != 0, groups
    st = _debugfs(image, "stat /usr/bin/chage")
    assert re.search(rf"User:\s+0\s+Group:\s+{groups['shadow']}\b", st), st
    assert re.search(r"Mode:\s+02755\b", st), st


def test_users_big_initrd_boots(rootless):
    """The user boots it, as the user (`composer verify` needs no namespace)."""
    user, env, base, _ = rootless
    out = base / "runtime"
    log = base / "serial.log"
    proc = as_user(
        user,
        [
            "composer",
            "verify",
            "--kernel",
            str(out / "images/pxeboot/vmlinuz"),
            "--initrd",
            str(out / "images/pxeboot/initrd.img"),
            "--memory",
            "512",
            "--timeout",
            "900",
            "--log",
            str(log),
        ],
        env,
        timeout=1000,
    )
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert proc.returncode == 0, f"no boot marker: {proc.stderr[-2000:]}\n--- serial tail ---\n{serial[-3000:]}"
    assert "COMPOSER-BOOT-OK" in serial


def _foreign_group_in_tree(work: Path, gid: int) -> bool:
    """True once a file of another group is in the tree; rpm renames its temporary
    files (`name;hash`) while we look, so a file that vanished is skipped."""
    for d in ("etc", "usr/bin"):
        for p in work.glob(f"*/tree/{d}/*"):
            try:
                if p.lstat().st_gid != gid:
                    return True
            except FileNotFoundError:
                continue
    return False


def test_interrupted_build_leaves_nothing(rootless):
    """Ctrl-C while dnf fills the tree (files of subordinate ids): composer cleans up
    from inside the namespace; nothing is left that the user could not remove."""
    user, env, base, repo = rootless
    work, out = base / "work-interrupted", base / "interrupted"
    work.mkdir()
    shutil.chown(work, user.pw_uid, user.pw_gid)
    proc = user_popen(
        user,
        [
            "composer",
            "runtime",
            "--product",
            "TestProduct",
            "--version",
            "1",
            "--source",
            f"file://{repo}",
            "--nogpgcheck",
            "--no-cache",
            "--workdir",
            str(work),
            str(out),
        ],
        env,
    )
    try:
        deadline = time.monotonic() + 300
        # a file of another group in the tree: rpm is unpacking with the subordinate ids
        while not _foreign_group_in_tree(work, user.pw_gid):
            assert proc.poll() is None and time.monotonic() < deadline, "dnf never started filling the tree"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted by SIGINT; cleaned up" in stderr
    assert list(work.iterdir()) == [], "the work directory was not cleaned up"
    assert not out.exists() and not list(base.glob(".interrupted.partial-*"))


@pytest.mark.soak
def test_stock_lorax_templates_as_the_user(rootless):
    """Issue 19 item 3 without root: the `lorax` command the user pip-installed (composer-lorax),
    lorax 40.5.19's stock templates unchanged and Pungi's argv, on the Fedora-shaped product;
    the boot.iso boots (SeaBIOS, the stock menus' default entry, 1024 MB)."""
    from composer.verify import boot_iso
    from testproduct import BOOT_MARKER
    from testproduct.fedoraproduct import build_fedoraproduct
    from tests.conftest import BUILD
    from tests.integration.test_lorax_stock import STOCK, VOLID

    if not (STOCK / "x86.tmpl").is_file():
        pytest.skip(f"lorax's stock templates are not at {STOCK} (LORAX_PEER)")
    user, env, base, _ = rootless
    repo = build_fedoraproduct(BUILD / "fedoraproduct")
    if as_user(user, ["test", "-r", str(repo / "repodata/repomd.xml")], {}).returncode != 0:
        shutil.copytree(repo, base / "fedora-repo")
        repo = base / "fedora-repo"
    work = base / "work-stock"
    work.mkdir()
    shutil.chown(work, user.pw_uid, user.pw_gid)
    argv = ["lorax", "-p", "Fedora", "-v", "43", "-r", "43", "-s", f"file://{repo}", "--buildarch", "x86_64"]
    argv += ["--isfinal", "--nomacboot", "--noupgrade", "--volid", VOLID, "--sharedir", str(STOCK)]
    argv += ["--workdir", str(work), "--logfile", str(base / "stock/lorax.log"), str(base / "stock/out")]
    proc = as_user(user, argv, env, timeout=3600)
    assert proc.returncode == 0, f"lorax as {user.pw_name} failed:\n{proc.stderr[-4000:]}"
    iso = base / "stock/out/images/boot.iso"
    assert iso.stat().st_uid == user.pw_uid
    log = base / "stock-serial.log"
    result = boot_iso(iso, firmware="bios", memory_mb=1024, timeout=1200, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
