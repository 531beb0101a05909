"""dnf5 for real: Debian unstable's dnf5 (a root made by scripts/dnf5-root) against the host's dnf 4.

The root is made once and cached by its inputs (/var/cache/composer-dnf5root/<digest>);
COMPOSER_DNF_ROOT=DIR names one made elsewhere.
"""

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from composer import treecheck
from composer.config import DnfChoice
from composer.dnf import RPMDB, DnfConfig, DnfSession
from composer.run import ComposerError
from tests.conftest import BUILD, ROOT, composer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def dnf5_root() -> Path:
    given = os.environ.get("COMPOSER_DNF_ROOT")
    if given:
        return Path(given)
    proc = subprocess.run([str(ROOT / "scripts" / "dnf5-root")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"scripts/dnf5-root failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def _shipped_tree(outdir: Path, dest: Path) -> Path:
    """The tree a runtime ships, read back from install.img's btrfs rootfs.img without a mount
    (btrfs restore: owners, modes, times, symlinks, xattrs)."""
    img = outdir / "images" / "install.img"
    dest.mkdir(parents=True)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest / "squash"), str(img), "LiveOS/rootfs.img"], check=True)
    tree = dest / "tree"
    tree.mkdir()
    subprocess.run(
        ["btrfs", "restore", "-m", "-S", "-x", str(dest / "squash" / "LiveOS" / "rootfs.img"), str(tree)],
        check=True,
        capture_output=True,
    )
    return tree


# ldconfig's record of the libraries' inode numbers and change times: differs from one
# install to the next whichever dnf runs it (its type, mode and owner are still compared).
VARIES = {"/var/cache/ldconfig/aux-cache"}
# useradd's scriptlets stamp each account's last password change with the day they ran
# (no epoch given): the session's dnf 4 build may be from the day before. Compared without it.
SHADOW = {"/etc/shadow", "/etc/shadow-"}


def _content(tree: Path, path: str) -> bytes:
    data = (tree / path.lstrip("/")).read_bytes()
    if path in SHADOW:
        lines = [line.split(b":") for line in data.splitlines()]
        data = b"\n".join(b":".join(f[:2] + [b"DAY"] + f[3:]) if len(f) > 2 else b":".join(f) for f in lines)
    return data


def _listing(tree: Path) -> dict[str, tuple]:
    """Every path's type, mode, owner, link target and (regular files) content digest,
    the rpm database left out: dnf 4's rpm 4.18 and dnf5's rpm 6 write it differently."""
    out: dict[str, tuple] = {}
    for path, node in treecheck.snapshot(tree).items():
        if path == RPMDB or path.startswith(RPMDB + "/"):
            continue
        digest = ""
        if node.kind == "f" and path not in VARIES:
            digest = hashlib.sha256(_content(tree, path)).hexdigest()
        out[path] = (node.describe(), digest)
    return out


@pytest.fixture(scope="module")
def dnf5_runtime(testproduct_repo, dnf5_root, tmp_path_factory) -> tuple[Path, Path]:
    """The test product's runtime composed with dnf5 (its outputs and its log)."""
    base = tmp_path_factory.mktemp("dnf5-runtime")
    out, log, cachedir = base / "out", base / "build.log", BUILD / "cache-dnf5"
    composer(
        "--logfile",
        str(log),
        "runtime",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        f"file://{testproduct_repo}",
        "--nogpgcheck",
        "--cachedir",
        str(cachedir),
        # --no-cache: dnf5 itself fills the tree (a cached tree would come without it running).
        "--compression",
        "lz4",
        "--dnf",
        "dnf5",
        "--dnf-root",
        str(dnf5_root),
        "--no-cache",
        str(out),
    )
    return out, log


def test_dnf5_runtime_is_dnf4s(runtime_outputs, dnf5_runtime, tmp_path):
    """The same packages and the same shipped tree (the rpm database aside) as the dnf 4
    session runtime, and the tree check passed: so its boot proves test_runtime's path
    again (make soak boots it)."""
    out, log = dnf5_runtime
    text = log.read_text()
    assert "dnf: dnf5 (dnf5 version 5." in text
    assert re.search(r"dnf5 .*--installroot=", text), "dnf5 did not run"

    dnf4 = json.loads((runtime_outputs / "manifest.json").read_text())
    dnf5 = json.loads((out / "manifest.json").read_text())
    assert dnf4["rootfs_type"] == dnf5["rootfs_type"] == "btrfs"
    assert dnf5["packages"] == dnf4["packages"] and len(dnf5["packages"]) > 100
    # The tree check passed on as many packaged paths as with dnf 4: rpm found its database
    # where the product keeps it (--dbpath /usr/lib/sysimage/rpm) in dnf5's tree too.
    assert dnf5["tree_check"]["packaged_paths_verified"] == dnf4["tree_check"]["packaged_paths_verified"] > 5000

    # What ships: every path with its type, mode, owner, target and content, as dnf 4 made it.
    a = _listing(_shipped_tree(runtime_outputs, tmp_path / "dnf4"))
    b = _listing(_shipped_tree(out, tmp_path / "dnf5"))
    differ = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
    assert not differ, [(p, a.get(p), b.get(p)) for p in differ[:10]]
    assert len(a) > 3000


@pytest.mark.soak
def test_dnf5_runtime_boots(dnf5_runtime, tmp_path):
    out, _ = dnf5_runtime
    pxe = out / "images" / "pxeboot"
    proc = composer(
        "verify",
        "--kernel",
        str(pxe / "vmlinuz"),
        "--initrd",
        str(pxe / "initrd.img"),
        "--log",
        str(tmp_path / "serial.log"),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------ errors, dnf 4 and dnf5 alike


def _build_rpm(top: Path, repo: Path, name: str, extra: str = "") -> None:
    spec = top / f"{name}.spec"
    # Each with a %doc file, for nodocs.
    spec.write_text(
        f"Name: {name}\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\nBuildArch: noarch\n{extra}\n"
        f"%description\nd\n%install\nmkdir -p %{{buildroot}}/etc %{{buildroot}}/usr/share/doc/{name}\n"
        f"echo {name} > %{{buildroot}}/etc/{name}\necho {name} > %{{buildroot}}/usr/share/doc/{name}/README\n"
        f"%files\n/etc/{name}\n%doc /usr/share/doc/{name}/README\n"
    )
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", "--define", f"_rpmdir {repo}", str(spec)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory) -> Path:
    """Unsigned packages: one needing what nothing provides, two in conflict, one fine (recommending one)."""
    if not shutil.which("rpmbuild"):
        pytest.skip("rpmbuild missing")
    base = tmp_path_factory.mktemp("smallrepo")
    repo = base / "repo"
    for name, extra in (
        ("fine", "Recommends: right"),
        ("needy", "Requires: nosuchthing"),
        ("left", "Conflicts: right"),
        ("right", ""),
    ):
        _build_rpm(base, repo, name, extra)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    return repo


@pytest.fixture(params=["dnf4", "dnf5"])
def flavor(request, dnf5_root) -> dict:
    return {"dnf": DnfChoice(request.param), "root": dnf5_root if request.param == "dnf5" else None}


def _session(tmp_path: Path, flavor: dict, *sources: str, nogpgcheck: bool = True) -> DnfSession:
    work = Path(tmp_path / "work")
    return DnfSession(
        work / "tree",
        DnfConfig(releasever="1", arch="x86_64", sources=sources, nogpgcheck=nogpgcheck, cachedir=tmp_path / "cache", **flavor),
        work,
    )


@pytest.mark.parametrize(
    "case,packages,nogpgcheck,message",
    [
        (
            "missing dependency",
            ["needy"],
            True,
            r"dnf transaction failed: .*nothing provides nosuchthing needed by needy-1-1\.noarch",
        ),
        (
            "conflict",
            ["left", "right"],
            True,
            r"dnf transaction failed: .*package left-1-1\.noarch.* conflicts with right provided by right-1-1\.noarch",
        ),
        (
            "unsigned",
            ["fine"],
            False,
            (
                r"dnf transaction failed: package fine-1-1\.noarch\.rpm is not signed: signature checks are on by default; "
                r"give the repository's key \(gpgkey= in a --repo file\) or pass --nogpgcheck"
            ),
        ),
    ],
    ids=["missing-dependency", "conflict", "unsigned"],
)
def test_dnf_errors_are_one_line_naming_the_cause(small_repo, flavor, tmp_path, case, packages, nogpgcheck, message):
    s = _session(tmp_path, flavor, f"file://{small_repo}", nogpgcheck=nogpgcheck)
    s.install(packages)
    with pytest.raises(ComposerError) as e:
        s.run_transaction()
    assert "\n" not in str(e.value)
    assert re.fullmatch(message + ".*", str(e.value)), str(e.value)
    assert s.installed() == []


def test_missing_package_and_unreadable_repository(small_repo, flavor, tmp_path):
    s = _session(tmp_path, flavor, f"file://{small_repo}")
    with pytest.raises(ComposerError, match=r"^no package matches 'nosuch' in the repositories$"):
        s.install(["nosuch"])
    s = _session(tmp_path / "2", flavor, "http://127.0.0.1:9/")
    with pytest.raises(ComposerError) as e:
        s.available()
    assert re.fullmatch(r"--source http://127\.0\.0\.1:9/: cannot read the repository: [^\n]+", str(e.value)), e.value
    assert "source0-" not in str(e.value), "the repository is named by its --source, not dnf's id"


def test_options_mean_the_same(small_repo, flavor, tmp_path):
    """Excludes, weak deps off, nodocs, the rpm database path, and dnf's cache, logs and history
    on the host: what lands in the tree is the packages' files and the database, nothing else."""
    work = tmp_path / "work"
    s = DnfSession(
        work / "tree",
        DnfConfig(
            releasever="1",
            arch="x86_64",
            sources=(f"file://{small_repo}",),
            nogpgcheck=True,
            cachedir=tmp_path / "cache",
            excludepkgs=("left",),
            **flavor,
        ),
        work,
    )
    assert "left" not in s.available() and "right" in s.available()  # dnf's own --exclude
    s.install(["fine"])  # it recommends right: weak dependencies stay out
    s.run_transaction()
    assert s.nevras() == ["fine-0:1-1.noarch"]
    found = sorted(str(p.relative_to(s.tree)) for p in s.tree.rglob("*") if not p.is_relative_to(s.tree / RPMDB[1:]))
    # No /usr/share/doc (nodocs), no cache, log, lock or history of dnf's.
    assert found == ["etc", "etc/fine", "usr", "usr/lib", "usr/lib/sysimage"]
    assert list((work / "dnf-log").iterdir()), "dnf's log is not on the host"
    assert any((tmp_path / "cache").iterdir()), "dnf's cache is not on the host"
    assert list((work / "dnf-state").iterdir()), "dnf's history is not on the host"
    assert (s.tree / RPMDB[1:] / "rpmdb.sqlite").is_file()
    assert s.installed() == ["fine"] and (s.tree / "etc" / "fine").is_file()


# ------------------------------------------------- lorax's repository options, dnf 4 and dnf5 alike


class _ProxyHandler(http.server.SimpleHTTPRequestHandler):
    """A forward proxy for one made-up host: serves its URLs from a local directory and
    remembers them (proof that dnf went through the proxy: the host does not resolve)."""

    seen: list[str] = []

    def translate_path(self, path: str) -> str:
        assert urlparse(path).netloc == "repo.invalid", path
        type(self).seen.append(path)
        return super().translate_path(urlparse(path).path)

    def log_message(self, *args) -> None:
        pass


def test_mirrorlist_proxy_and_repo_switches(small_repo, flavor, tmp_path):
    # -m: a local mirrorlist file naming the repository.
    mirrorlist = tmp_path / "mirrorlist"
    mirrorlist.write_text(f"# mirrors\nfile://{small_repo}\n")
    s = DnfSession(
        tmp_path / "m/tree",
        DnfConfig(
            releasever="1",
            arch="x86_64",
            mirrorlists=(f"file://{mirrorlist}",),
            nogpgcheck=True,
            cachedir=tmp_path / "cache",
            **flavor,
        ),
        tmp_path / "m",
    )
    s.install(["fine"])
    s.run_transaction()
    assert s.nevras() == ["fine-0:1-1.noarch"]

    # --enablerepo GLOB turns on a disabled section of a --repo file; --disablerepo (after it) turns it off.
    repofile = tmp_path / "extra.repo"
    repofile.write_text(f"[off-by-default]\nname=x\nbaseurl=file://{small_repo}\nenabled=0\ngpgcheck=0\n")
    cfg = DnfConfig(releasever="1", arch="x86_64", repofiles=(repofile,), cachedir=tmp_path / "cache", **flavor)
    on = DnfSession(tmp_path / "e/tree", dataclasses.replace(cfg, enablerepos=("off-*",)), tmp_path / "e")
    assert "fine" in on.available()
    off = DnfSession(
        tmp_path / "d/tree", dataclasses.replace(cfg, enablerepos=("off-*",), disablerepos=("off-by-default",)), tmp_path / "d"
    )
    with pytest.raises(ComposerError, match="no package matches 'fine'"):
        off.install(["fine"])

    # --proxy: every fetch of an http source goes through it.
    _ProxyHandler.seen = []
    handler = functools.partial(_ProxyHandler, directory=str(small_repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = DnfSession(
            tmp_path / "p/tree",
            DnfConfig(
                releasever="1",
                arch="x86_64",
                sources=("http://repo.invalid/",),
                proxy=f"http://127.0.0.1:{server.server_address[1]}",
                nogpgcheck=True,
                cachedir=tmp_path / "pcache",
                **flavor,
            ),
            tmp_path / "p",
        )
        p.install(["fine"])
        p.run_transaction()
    finally:
        server.shutdown()
        server.server_close()
    assert p.nevras() == ["fine-0:1-1.noarch"]
    assert "http://repo.invalid/repodata/repomd.xml" in _ProxyHandler.seen
    assert any(u.endswith(".rpm") for u in _ProxyHandler.seen), _ProxyHandler.seen
    # How packages were fetched is not part of what the tree is (the cache key).
    assert not any("proxy" in a for a in p.shaping_options())


def test_who_provides_system_release(small_repo, flavor, tmp_path):
    """lorax's automatic branding asks dnf which packages provide system-release."""
    repo = tmp_path / "brand"
    (tmp_path / "top").mkdir()
    _build_rpm(tmp_path / "top", repo, "brand-release", "Provides: system-release")
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    s = _session(tmp_path, flavor, f"file://{small_repo}", f"file://{repo}")
    assert s.providers("system-release") == ["brand-release"]
    assert s.providers("nosuchthing") == []
