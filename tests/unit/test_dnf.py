from pathlib import Path

import pytest

from composer.dnf import DnfConfig, DnfSession
from composer.run import ComposerError


def fake_repo(tmp_path: Path) -> str:
    (tmp_path / "repo" / "repodata").mkdir(parents=True)
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd/>")
    return f"file://{tmp_path / 'repo'}"


def test_dnf_argv_carries_the_build_settings(tmp_path):
    url = fake_repo(tmp_path)
    cfg = DnfConfig(releasever="43", arch="x86_64", sources=(url,), excludepkgs=("foo*",),
                    cachedir=tmp_path / "cache", nogpgcheck=False)
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    argv = s._dnf_argv()
    assert f"--installroot={tmp_path / 'tree'}" in argv
    assert "--releasever=43" in argv
    assert "--setopt=install_weak_deps=False" in argv
    assert "--exclude=foo*" in argv
    assert any(a.startswith("--repofrompath=") and a.endswith("," + url) for a in argv)
    # GPG checking stays on unless asked otherwise.
    assert "--nogpgcheck" not in argv
    assert any(a.endswith(".gpgcheck=1") for a in argv)
    # rpm inside the tree keeps its database where Fedora does, not in ~/.rpmdb.
    assert "/usr/lib/sysimage/rpm" in (tmp_path / "work" / "home" / ".rpmmacros").read_text()


def test_nogpgcheck(tmp_path):
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c", nogpgcheck=True)
    argv = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")._dnf_argv()
    assert "--nogpgcheck" in argv and any(a.endswith(".gpgcheck=0") for a in argv)


@pytest.mark.parametrize("url,msg", [
    ("not a url", "not a URL"),
    ("file:///nonexistent/repo", "no repository there"),
])
def test_bad_source_is_named(tmp_path, url, msg):
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(url,), cachedir=tmp_path / "c")
    with pytest.raises(ComposerError, match=f"--source {url}: {msg}"):
        DnfSession(tmp_path / "tree", cfg, tmp_path / "work")


def test_no_source_at_all(tmp_path):
    with pytest.raises(ComposerError, match="no package source"):
        DnfSession(tmp_path / "tree", DnfConfig(releasever="1", arch="x86_64"), tmp_path / "work")


def test_required_pattern_without_match_fails_optional_is_skipped(tmp_path):
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c",
                    excludepkgs=("kernel-debug*",))
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    s._available = ["bash", "kernel", "kernel-debug", "kernel-modules"]  # as repoquery would list them
    s.install(["kernel*"], required=True, exclude=["kernel-modules"])
    assert s._to_install == ["kernel"]
    s.install(["nosuch"], required=False)
    with pytest.raises(ComposerError, match="no package matches 'nosuch'"):
        s.install(["nosuch"], required=True)


def test_dnf_reason_keeps_the_scriptlet_failure():
    from composer.dnf import _dnf_reason

    stderr = ("Running transaction\n  Installing : libgpg-error0-1.46-1.x86_64\nFailed:\n  failing-pre-1-1.noarch\n"
              "Error in PREIN scriptlet in rpm package failing-pre\nError: Transaction failed\n")
    assert _dnf_reason(stderr) == "Error in PREIN scriptlet in rpm package failing-pre | Error: Transaction failed"


def test_dnf_cache_and_logs_stay_on_the_host(tmp_path):
    """dnf prefixes cachedir and logdir with the installroot; a real dnf run must still write
    them on the host and leave nothing of them (nor the work dir's path) in the tree."""
    import shutil
    import subprocess
    import tempfile

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    work = Path(tempfile.mkdtemp(prefix="composer-test-", dir="/var/tmp"))  # as in a build
    try:
        tree = work / "tree"
        (tree / "var/tmp").mkdir(parents=True)
        cache = tmp_path / "cache"
        s = DnfSession(tree, DnfConfig(releasever="1", arch="x86_64", sources=(f"file://{repo}",),
                                       cachedir=cache, nogpgcheck=True), work)
        assert s.available() == []  # a real dnf run over an empty repository
        assert any(cache.iterdir()), "dnf's cache is not on the host"
        assert (work / "dnf-log" / "dnf.log").is_file(), "dnf's log is not on the host"
        assert not (tree / work.relative_to("/")).exists()
        assert list((tree / "var/tmp").iterdir()) == []  # empty parents go too, /var/tmp stays
        assert not (tree / cache.relative_to("/").parts[0]).exists()
    finally:
        shutil.rmtree(work)


def test_unsigned_packages_are_named_with_the_way_out(tmp_path):
    """GPG checks on (the default) over unsigned packages: dnf only says "Problem repository"."""
    import shutil
    import subprocess

    if not shutil.which("rpmbuild"):
        pytest.skip("rpmbuild missing")
    spec = tmp_path / "u.spec"
    spec.write_text("Name: unsigned\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\nBuildArch: noarch\n"
                    "%description\nd\n%files\n")
    repo = tmp_path / "repo"
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {tmp_path / 'top'}",
                    "--define", f"_rpmdir {repo}", str(spec)], check=True, capture_output=True)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    s = DnfSession(tmp_path / "tree", DnfConfig(releasever="1", arch="x86_64", sources=(f"file://{repo}",),
                                                 cachedir=tmp_path / "cache"), tmp_path / "work")
    s.install(["unsigned"])
    with pytest.raises(ComposerError) as e:
        s.run_transaction()
    assert str(e.value) == ("dnf transaction failed: package unsigned-1-1.noarch.rpm is not signed: signature "
                            "checks are on by default; give the repository's key (gpgkey= in a --repo file) "
                            "or pass --nogpgcheck to trust the source as it is")
