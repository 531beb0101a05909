"""The tree cache: its key and its storage (no dnf here; see tests/integration for that)."""

import dataclasses
import json
import os
import stat

import pytest

from composer.cache import FORMAT_VERSION, InstallInputs, TreeCache, tree_key
from composer.run import locked_mkdir

BASE = InstallInputs(
    metadata_digest="a" * 64,
    install_template="installpkg bash\nrun_pkg_transaction\n",
    template_files=(("files/motd", "b" * 64),),
    installpkgs=("vim", "less"),
    excludepkgs=("foo*",),
    arch="x86_64",
    version="1",
    product="TestProduct",
    variables=(("product", "'TestProduct'"), ("rootfs_type", "'btrfs'")),
    dnf_argv=("dnf", "-y", "--installroot=@TREE@", "--setopt=install_weak_deps=False"),
)

CHANGES = {
    "metadata_digest": "c" * 64,
    "install_template": "installpkg bash zsh\nrun_pkg_transaction\n",
    "template_files": (("files/motd", "d" * 64),),
    "installpkgs": ("vim", "less", "nano"),
    "excludepkgs": ("bar*",),
    "arch": "aarch64",
    "version": "2",
    "product": "Other",
    "variables": (("product", "'TestProduct'"), ("rootfs_type", "'ext4'")),
    "dnf_argv": ("dnf", "-y", "--installroot=@TREE@", "--setopt=install_weak_deps=True"),
    "source_date_epoch": 1700000000,
    "code": "0.1.0:" + "e" * 64,
}


def test_code_digest_names_the_version_and_all_the_code():
    from composer import __version__
    from composer.cache import code_digest

    version, digest = code_digest().split(":")
    assert version == __version__ and len(digest) == 64
    assert code_digest() == code_digest()


def test_key_is_stable():
    assert tree_key(BASE) == tree_key(dataclasses.replace(BASE))
    assert len(tree_key(BASE)) == 64


def test_every_field_is_covered():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(InstallInputs)}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_key_changes_with_each_input(field):
    assert tree_key(dataclasses.replace(BASE, **{field: CHANGES[field]})) != tree_key(BASE)


def test_key_ignores_order_where_dnf_does():
    same = dataclasses.replace(BASE, installpkgs=("less", "vim", "vim"), variables=tuple(reversed(BASE.variables)))
    assert tree_key(same) == tree_key(BASE)


def test_key_changes_with_format_version(monkeypatch):
    before = tree_key(BASE)
    monkeypatch.setattr("composer.cache.FORMAT_VERSION", FORMAT_VERSION + 1)
    assert tree_key(BASE) != before


def make_tree(root):
    """A small tree with what must survive the round trip."""
    (root / "usr/lib/sysimage/rpm").mkdir(parents=True)
    (root / "usr/lib/sysimage/rpm/rpmdb.sqlite").write_bytes(b"SQLite format 3\0" + b"x" * 100)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/su").write_text("#!/bin/sh\n")
    os.chmod(root / "usr/bin/su", 0o4755)
    os.chown(root / "usr/bin/su", 0, 0)
    (root / "etc").mkdir()
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    os.chown(root / "etc/shadow", 0, 42)
    os.chmod(root / "etc/shadow", 0o640)
    os.link(root / "usr/bin/su", root / "usr/bin/su-link")
    os.symlink("usr/bin", root / "bin")
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(root / "usr/bin/su", "user.composer", b"kept")
    os.utime(root / "etc/shadow", (1_000_000, 1_000_000))


def snapshot(root):
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_nlink,
            st.st_rdev,
            int(st.st_mtime),
            os.readlink(p) if p.is_symlink() else None,
        )
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="device nodes and chown need root")
def test_store_and_restore_keep_everything(tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree)
    cache = TreeCache(tmp_path / "cache" / "trees")
    key = "f" * 64
    entry = cache.store(key, tree, packages=["bash-0:5.2-1.x86_64"], treeinfo={"general": {"name": "x"}})
    assert entry is not None and entry.size > 0
    assert [p.name for p in (tmp_path / "cache" / "trees").iterdir()] == [key]  # no temporary left

    found = cache.lookup(key)
    assert found is not None and found.packages == ("bash-0:5.2-1.x86_64",)
    assert found.treeinfo == {"general": {"name": "x"}}
    restored = tmp_path / "restored"
    restored.mkdir()
    assert cache.restore(found, restored)
    assert snapshot(restored) == snapshot(tree)
    assert os.stat(restored / "usr/bin/su").st_ino == os.stat(restored / "usr/bin/su-link").st_ino
    assert os.getxattr(restored / "usr/bin/su", "user.composer") == b"kept"


def test_damaged_entry_is_dropped(tmp_path):
    cache = TreeCache(tmp_path / "trees")
    key = "e" * 64
    d = tmp_path / "trees" / key
    (d / "tree").mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"format": FORMAT_VERSION, "key": key, "packages": ["x"]}))
    assert cache.lookup(key) is None  # no rpm database in the tree
    assert not d.exists()


def test_stale_temporary_is_removed_and_eviction_keeps_newest(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/lib/sysimage/rpm").mkdir(parents=True)
    (tree / "usr/lib/sysimage/rpm/db").write_text("x")
    root = tmp_path / "trees"
    root.mkdir()
    os.close(locked_mkdir(root / ".tmp-deadbeef-1"))  # a killed build's half-written entry
    cache = TreeCache(root, keep=2)
    for i, key in enumerate(["1" * 64, "2" * 64, "3" * 64]):
        assert cache.store(key, tree, packages=["p"], treeinfo={}) is not None
        os.utime(root / key / "meta.json", (1000 + i, 1000 + i))
    cache.evict()
    assert sorted(p.name for p in root.iterdir()) == ["2" * 64, "3" * 64]


def test_store_failure_costs_only_the_entry(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    tree.mkdir()
    cache = TreeCache(tmp_path / "trees")

    def no_space(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("composer.cache._cp_a", no_space)
    assert cache.store("9" * 64, tree, packages=["p"], treeinfo={}) is None
    assert list((tmp_path / "trees").iterdir()) == []


def inputs_for(tmp_path, work_name, templates, cfg_changes=None):
    """install_inputs() of a build with the given template directory and work directory."""
    from composer.cache import install_inputs
    from composer.config import Config
    from composer.dnf import DnfConfig, DnfSession
    from composer.product import template_variables
    from composer.templates import TemplateRunner

    repo = tmp_path / "repo"
    (repo / "repodata").mkdir(parents=True, exist_ok=True)
    if not (repo / "repodata" / "repomd.xml").exists():
        (repo / "repodata" / "repomd.xml").write_text("<repomd>1</repomd>")
    cfg = Config(
        product="TestProduct",
        version="1",
        outdir=tmp_path / "out",
        sources=(f"file://{repo}",),
        arch="x86_64",
        cachedir=tmp_path / "cache",
        **(cfg_changes or {}),
    )
    work = tmp_path / work_name
    session = DnfSession(
        work / "tree",
        DnfConfig(
            releasever=cfg.version, arch=cfg.arch, sources=cfg.sources, excludepkgs=cfg.excludepkgs, cachedir=cfg.cachedir / "dnf"
        ),
        work,
    )
    runner = TemplateRunner(tree=work / "tree", templatedir=templates, variables=template_variables(cfg), pkgmgr=session)
    return install_inputs(cfg, session, runner, templates / "runtime-install.tmpl")


@pytest.fixture
def templates(tmp_path):
    d = tmp_path / "templates"
    d.mkdir()
    (d / "runtime-install.tmpl").write_text(
        "installpkg bash\n%if rootfs_type == 'btrfs':\ninstallpkg btrfs-progs\n%endif\n"
        "install usr/share/motd /etc/motd\nrun_pkg_transaction\n"
    )
    (d / "config_files").mkdir()  # lorax copies config_files/ into the tree: part of the key
    (d / "config_files" / "motd").write_text("hello\n")
    (d / "runtime-cleanup.tmpl").write_text("remove /usr/share/doc\n")
    return d


def test_inputs_do_not_depend_on_work_paths(tmp_path, templates):
    a = inputs_for(tmp_path, "work-a", templates)
    b = inputs_for(tmp_path, "work-b", templates)
    assert a == b
    assert "--setopt=install_weak_deps=False" in a.dnf_argv
    assert not any("work-a" in arg or "--installroot" in arg or "cachedir" in arg for arg in a.dnf_argv)


def test_inputs_follow_the_install_stage_only(tmp_path, templates):
    base = tree_key(inputs_for(tmp_path, "w0", templates))
    (templates / "runtime-cleanup.tmpl").write_text("remove /usr/share/man\n")  # a later stage
    assert tree_key(inputs_for(tmp_path, "w1", templates)) == base
    (templates / "config_files" / "motd").write_text("changed\n")  # a file that reaches the tree
    changed_file = tree_key(inputs_for(tmp_path, "w2", templates))
    assert changed_file != base
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd>2</repomd>")  # the repository changed
    changed_repo = tree_key(inputs_for(tmp_path, "w3", templates))
    assert changed_repo != changed_file
    from composer.config import RootfsType

    ext4 = tree_key(inputs_for(tmp_path, "w4", templates, {"rootfs_type": RootfsType.EXT4}))  # renders differently
    assert ext4 != changed_repo
    assert tree_key(inputs_for(tmp_path, "w5", templates, {"compression": "lz4"})) == changed_repo
    assert tree_key(inputs_for(tmp_path, "w6", templates, {"excludepkgs": ("foo",)})) != changed_repo


def test_inputs_are_the_same_in_another_process(tmp_path, templates):
    """The key must not depend on anything that changes from run to run (seen: the repr of
    lorax's udev/lower functions carried their address, and no build ever hit the cache)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, '.'); "
        "from tests.unit.test_cache import inputs_for; from composer.cache import tree_key; "
        f"print(tree_key(inputs_for(Path({str(tmp_path)!r}), 'w', Path({str(templates)!r}))))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]
        ).stdout
        for _ in range(2)
    }
    assert len(keys) == 1 and len(keys.pop().strip()) == 64
