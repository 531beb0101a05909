"""The tree check, and the three defects it exists for (issue 9), with a real dnf run."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from composer import treecheck as tc
from composer.dnf import RPMDB, DnfConfig, DnfSession, RpmFile, tree_ids
from composer.run import ComposerError


def rf(path, kind="d", perm=0o755, user="root", group="root", target="", package="fs"):
    return RpmFile(path, kind, perm, user, group, target, package)


def test_snapshot_records_type_mode_owner_and_link(tmp_path):
    (tmp_path / "tmp").mkdir()
    os.chmod(tmp_path / "tmp", 0o1777)
    (tmp_path / "tmp" / "f").write_text("x")
    (tmp_path / "bin").symlink_to("usr/bin")
    snap = tc.snapshot(tmp_path)
    assert snap["/tmp"] == tc.Node("d", 0o1777, 0, 0)
    assert snap["/tmp/f"].kind == "f"
    assert snap["/bin"] == tc.Node("l", 0o777, 0, 0, "usr/bin")


def test_check_packaged_names_each_kind_of_difference():
    snap = {
        "/tmp": tc.Node("d", 0o755, 0, 0),
        "/etc": tc.Node("d", 0o755, 0, 0),
        "/usr/bin/chage": tc.Node("f", 0o2755, 0, 0),
        "/dev": tc.Node("d", 0o755, 0, 0),
        "/dev/null": tc.Node("f", 0o644, 0, 0),
    }
    packaged = {
        "/tmp": [rf("/tmp", perm=0o1777)],
        "/var/tmp": [rf("/var/tmp", perm=0o1777)],
        "/etc": [rf("/etc")],
        "/dev": [rf("/dev")],
        "/usr/bin/chage": [rf("/usr/bin/chage", "f", 0o2755, group="shadow", package="passwd")],
    }
    problems = tc.check_packaged(snap, packaged, {"root": 0}, {"root": 0, "shadow": 42})
    assert problems == [
        "/tmp: is d 0755 0:0, package fs says d 1777 0:0",
        "/usr/bin/chage: is f 2755 0:0, package passwd says f 2755 0:42",
        "/var/tmp: missing (package fs installed it)",
        "/dev/null: made by no package (written into the tree's dev without it mounted?)",
    ]
    assert tc.check_packaged(snap, packaged, {}, {"shadow": 42}, only={"/etc"}) == []


def test_shared_directory_matches_any_owner():
    snap = {"/var/log": tc.Node("d", 0o755, 0, 4)}
    packaged = {"/var/log": [rf("/var/log"), rf("/var/log", group="adm", package="other")]}
    assert tc.check_packaged(snap, packaged, {}, {"adm": 4}) == []


def test_changes_must_be_asked_for():
    before = {"/etc": tc.Node("d", 0o755, 0, 0), "/tmp": tc.Node("d", 0o1777, 0, 0), "/usr/share/doc": tc.Node("d", 0o755, 0, 0)}
    after = {
        "/etc": tc.Node("d", 0o755, 0, 0),
        "/tmp": tc.Node("d", 0o755, 0, 0),
        "/opt": tc.Node("d", 0o755, 0, 0),
        "/opt/x": tc.Node("d", 0o755, 0, 0),
        "/opt/x/y": tc.Node("f", 0o644, 0, 0),
        "/var": tc.Node("d", 0o755, 0, 0),
    }
    ledger = tc.Ledger()
    ledger.record("cleanup.tmpl:3", ["/usr/share/doc"])
    ledger.record("postinstall.tmpl:9", ["/opt/x/y"])
    assert tc.check_changes(before, after, ledger) == [
        "/tmp: changed from d 1777 0:0 to d 0755 0:0, asked for by no template command",
        "/var: appeared (d 0755 0:0), asked for by no template command",
    ]
    assert ledger.who("/usr/share/doc/pkg/README") == "cleanup.tmpl:3"


def test_observe_attributes_whatever_the_block_changed(tmp_path):
    ledger = tc.Ledger()
    seen = []
    ledger.verify_packages = seen.append
    with ledger.observe(tmp_path, "x.tmpl:1: runcmd", packages=True) as changes:
        (tmp_path / "made").write_text("x")
    assert changes == {"/made": "appeared (f 0644 0:0)"}
    assert ledger.who("/made") == "x.tmpl:1: runcmd" and seen == [{"/made"}]


def test_fail_on_names_the_first_path():
    with pytest.raises(ComposerError, match=r"tree check after cleanup: /tmp: bad \(and 1 more; see the log\)"):
        tc.fail_on(["/tmp: bad", "/x: bad"], "after cleanup")
    tc.fail_on([], "anywhere")


# ------------------------------------------------------------------ a real dnf transaction

SPEC = """\
Name: fsprobe
Version: 1
Release: 1
Summary: directories a root filesystem package owns, and a scriptlet like ldconfig's
License: MIT
BuildArch: noarch
%description
test
%install
for d in tmp var/tmp root dev proc sys var/lib etc usr/bin; do mkdir -p %{buildroot}/$d; done
echo hello > %{buildroot}/usr/bin/hello
%post -p <lua>
-- what a shell scriptlet's `ldconfig > /dev/null` does, without a shell in the tree
local null = io.open("/dev/null", "w"); null:write("/usr/sbin/ldconfig\\n"); null:close()
if io.open("/proc/self/stat", "r") and posix.stat("/sys/kernel", "type") == "directory" then
  local f = io.open("/var/lib/probe", "w"); f:write("api-ok\\n"); f:close()
end
%files
%attr(1777,root,root) %dir /tmp
%attr(1777,root,root) %dir /var/tmp
%attr(0700,root,root) %dir /root
%attr(0555,root,root) %dir /proc
%attr(0555,root,root) %dir /sys
%dir /dev
%dir /var/lib
%dir /etc
/usr/bin/hello
"""


@pytest.fixture(scope="module")
def probe_repo(tmp_path_factory) -> Path:
    if not shutil.which("rpmbuild") or not shutil.which("createrepo_c"):
        pytest.skip("rpmbuild/createrepo_c missing (scripts/setup-host installs them)")
    base = tmp_path_factory.mktemp("probe")
    (base / "fsprobe.spec").write_text(SPEC)
    repo = base / "repo"
    subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--quiet",
            "--define",
            f"_topdir {base / 'top'}",
            "--define",
            f"_rpmdir {repo}",
            str(base / "fsprobe.spec"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    return repo


@pytest.mark.parametrize("parent", ["/var/tmp", "/tmp"])
def test_transaction_leaves_the_tree_as_its_package_says(probe_repo, tmp_path, parent):
    """The three defects of issue 9, each seen at cc38539 with this install:
    the tree lost /var/tmp (work dir under /var/tmp, the default), /tmp was 0755 (work dir
    under /tmp), and the scriptlet's `> /dev/null` left a regular file /dev/null."""
    work = Path(tempfile.mkdtemp(prefix="composer-test-", dir=parent))
    try:
        tree, cache = work / "tree", tmp_path / "cache"
        s = DnfSession(
            tree,
            DnfConfig(releasever="1", arch="x86_64", sources=(f"file://{probe_repo}",), cachedir=cache, nogpgcheck=True),
            work,
        )
        ledger = tc.Ledger()
        ledger.record("rpm", [RPMDB])
        s.install(["fsprobe"])
        with ledger.observe(tree, "run_pkg_transaction", packages=True):
            s.run_transaction()
        snap = tc.snapshot(tree)
        assert snap["/var/tmp"].perm == 0o1777 and snap["/tmp"].perm == 0o1777 and snap["/root"].perm == 0o700
        assert snap["/proc"].perm == 0o555 and snap["/sys"].perm == 0o555
        assert [p for p in snap if p.startswith("/dev/")] == [], "a scriptlet wrote into the bare /dev"
        assert (tree / "var/lib/probe").read_text() == "api-ok\n", "the scriptlet had no /proc or /sys"
        assert tc.check_packaged(snap, s.packaged_files(), *tree_ids(tree)) == []
        # Nothing in the tree that neither the package nor its scriptlet made.
        assert tc.check_changes({}, snap, ledger) == []
        packaged = set(s.packaged_files())
        unpackaged = {p for p in snap if p not in packaged and not p.startswith((RPMDB, "/var/lib/probe"))}
        # rpm makes the parents of what it installs; nothing else is there.
        assert all(snap[p].kind == "d" and any(q.startswith(p + "/") for q in packaged | {RPMDB}) for p in unpackaged), unpackaged
        assert any(cache.iterdir()), "dnf's cache is not on the host"
        assert (work / "dnf-log" / "dnf.log").is_file() and (work / "dnf-state").is_dir()
        assert not (tree / "etc/dnf").exists()
    finally:
        shutil.rmtree(work)


def test_a_directory_a_command_made_does_not_cover_later_files_in_it(tmp_path):
    """Seen for real: the dracut package's transaction made /etc/dracut.conf.d, and an empty
    mount-point file bubblewrap left there later went unnoticed."""
    ledger = tc.Ledger()
    with ledger.observe(tmp_path, "run_pkg_transaction"):
        (tmp_path / "etc/dracut.conf.d").mkdir(parents=True)
    before = tc.snapshot(tmp_path)
    (tmp_path / "etc/dracut.conf.d/90-composer.conf").touch()
    assert tc.check_changes(before, tc.snapshot(tmp_path), ledger) == [
        "/etc/dracut.conf.d/90-composer.conf: appeared (f 0644 0:0), asked for by no template command"
    ]
    ledger.record("cleanup.tmpl:1", ["/etc/dracut.conf.d"])
    assert tc.check_changes(before, tc.snapshot(tmp_path), ledger) == []
    ledger.forget()
    assert ledger.who("/etc/dracut.conf.d") is None


def test_tree_check_object_follows_one_build(tmp_path):
    """TreeCheck keeps the snapshots of one build: installed, final, shipped; each check
    compares with the right one and names what changed."""
    (tmp_path / "usr").mkdir()
    packaged = {"/usr": [rf("/usr")]}
    check = tc.TreeCheck(tmp_path, lambda: packaged, lambda tree: ({"root": 0}, {"root": 0}), [RPMDB])
    check.ledger.record("install template", ["/usr"])
    check.check_fresh()
    assert check.verify_packages() == [] and check.packaged_paths == 1
    check.installed_now()
    assert "/usr" in check.installed and check.ledger.who("/usr") is None  # asked for anew
    (tmp_path / "etc").mkdir()
    with pytest.raises(ComposerError, match="tree check after cleanup: /etc: appeared"):
        check.check_final()
    check.ledger.record("postinstall template", ["/etc"])
    record = check.check_final()
    assert record == {
        "packaged_paths_verified": 1,
        "paths_after_install": 1,
        "paths_shipped": 2,
        "changed_by_templates": 1,
        "observed_commands": 0,
    }
    check.ship()
    check.check_unchanged("after dracut")
    (tmp_path / "etc" / "x").write_text("")
    with pytest.raises(ComposerError, match="tree check after dracut: /etc/x: appeared"):
        check.check_unchanged("after dracut")
