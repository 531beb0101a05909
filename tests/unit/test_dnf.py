import dataclasses
import os
import re
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
    cfg = DnfConfig(
        releasever="43", arch="x86_64", sources=(url,), excludepkgs=("foo*",), cachedir=tmp_path / "cache", nogpgcheck=False
    )
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    argv = s._dnf_argv()
    assert f"--installroot={tmp_path / 'tree'}" in argv
    assert "--releasever=43" in argv
    assert "--setopt=install_weak_deps=False" in argv
    assert "--exclude=foo*" in argv
    # The source is a repository of dnf's reposdir (no URL on the command line).
    assert f"--setopt=reposdir={tmp_path / 'work' / 'repos.d'}" in argv
    repo = (tmp_path / "work" / "repos.d" / "composer-sources.repo").read_text()
    assert f"baseurl={url}\n" in repo and "metadata_expire=0\n" in repo
    # GPG checking stays on unless asked otherwise.
    assert "--nogpgcheck" not in argv
    assert "gpgcheck=1\n" in repo
    # rpm inside the tree keeps its database where Fedora does, not in ~/.rpmdb.
    assert "/usr/lib/sysimage/rpm" in (tmp_path / "work" / "home" / ".rpmmacros").read_text()


def test_docs_and_weak_deps_as_asked(tmp_path):
    """lorax's runtime: no docs, no weak deps (the defaults); a kickstart's image install: both."""
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c")
    argv = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")._dnf_argv()
    assert "--setopt=install_weak_deps=False" in argv and "--setopt=tsflags=nodocs" in argv
    anaconda = dataclasses.replace(cfg, nodocs=False, weak_deps=True)
    s = DnfSession(tmp_path / "tree", anaconda, tmp_path / "work2")
    assert "--setopt=install_weak_deps=True" in s._dnf_argv() and "--setopt=tsflags=nodocs" not in s._dnf_argv()
    assert "--setopt=install_weak_deps=True" in s.shaping_options()  # a cached tree of the other kind is not used


def test_a_kickstart_repositorys_own_options(tmp_path, monkeypatch):
    """repo --includepkgs/--excludepkgs/--cost/--proxy/--noverifyssl: options of that repository
    alone, in its section of dnf's reposdir; what dnf may install shapes the cache key, how it
    fetches does not; the proxy's password is an option of its own, never in a file unmasked."""
    from composer.dnf import DnfProgram

    monkeypatch.setattr(DnfSession, "program", DnfProgram("dnf4", "dnf", "x", "rpm x"))
    first, second = fake_repo(tmp_path), fake_repo(tmp_path / "b")
    own = (("includepkgs", "less,kmod*"), ("cost", "5"), ("proxy", "http://u:Pr0xy-Pw@proxy:3128"), ("sslverify", "0"))
    cfg = DnfConfig(
        releasever="1", arch="x86_64", sources=(first, second), repo_options=((second, own),), cachedir=tmp_path / "c"
    )
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    one, two = (s.reposdir / "composer-sources.repo").read_text().split("\n\n")
    assert "includepkgs" not in one and "proxy" not in one and "cost" not in one
    for line in ("includepkgs=less,kmod*", "cost=5", "proxy=http://proxy:3128", "proxy_password=***", "sslverify=0"):
        assert line + "\n" in two + "\n", line
    assert "Pr0xy-Pw" not in two
    key = s.shaping_options()
    assert any(k.endswith(": includepkgs=less,kmod*") for k in key) and any(k.endswith(": cost=5") for k in key)
    assert not any("proxy" in k or "sslverify" in k for k in key)


def test_install_langs_is_rpms_macro(tmp_path):
    """%packages --instLangs as anaconda hands it to rpm: %_install_langs, "" as %{nil}; in the key."""
    from composer.dnf import DnfProgram

    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c")
    for langs, macro in ((None, None), ("de:pt_BR", "%_install_langs de:pt_BR"), ("", "%_install_langs %{nil}")):
        s = DnfSession(tmp_path / "tree", dataclasses.replace(cfg, install_langs=langs), tmp_path / f"work{macro}")
        s._program = DnfProgram("dnf4", "dnf", "x", "rpm x")
        macros = (s.home / ".rpmmacros").read_text()
        assert "%_dbpath" in macros
        if macro is None:
            assert "_install_langs" not in macros and not any(k.startswith("rpm macro") for k in s.shaping_options())
        else:
            assert macro + "\n" in macros and f"rpm macro {macro}" in s.shaping_options()


def test_nogpgcheck(tmp_path):
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c", nogpgcheck=True)
    argv = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")._dnf_argv()
    assert "--nogpgcheck" in argv and "gpgcheck=0\n" in (tmp_path / "work/repos.d/composer-sources.repo").read_text()


@pytest.mark.parametrize(
    "url,msg",
    [
        ("not a url", "not a URL"),
        ("file:///nonexistent/repo", "no repository there"),
    ],
)
def test_bad_source_is_named(tmp_path, url, msg):
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(url,), cachedir=tmp_path / "c")
    with pytest.raises(ComposerError, match=f"--source {url}: {msg}"):
        DnfSession(tmp_path / "tree", cfg, tmp_path / "work")


def test_no_source_at_all(tmp_path):
    with pytest.raises(ComposerError, match="no package source"):
        DnfSession(tmp_path / "tree", DnfConfig(releasever="1", arch="x86_64"), tmp_path / "work")


def test_required_pattern_without_match_fails_optional_is_skipped(tmp_path):
    cfg = DnfConfig(
        releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c", excludepkgs=("kernel-debug*",)
    )
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    s._available = ["bash", "kernel", "kernel-debug", "kernel-modules"]  # as repoquery would list them
    s.install(["kernel*"], required=True, exclude=["kernel-modules"])
    assert s._to_install == ["kernel"]
    s.install(["nosuch"], required=False)
    with pytest.raises(ComposerError, match="no package matches 'nosuch'"):
        s.install(["nosuch"], required=True)


def test_dnf_reason_keeps_the_scriptlet_failure():
    from composer.dnf.programs import dnf_reason

    stderr = (
        "Running transaction\n  Installing : libgpg-error0-1.46-1.x86_64\nFailed:\n  failing-pre-1-1.noarch\n"
        "Error in PREIN scriptlet in rpm package failing-pre\nError: Transaction failed\n"
    )
    assert dnf_reason(stderr) == "Error in PREIN scriptlet in rpm package failing-pre | Error: Transaction failed"


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
        s = DnfSession(
            tree, DnfConfig(releasever="1", arch="x86_64", sources=(f"file://{repo}",), cachedir=cache, nogpgcheck=True), work
        )
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
    spec.write_text(
        "Name: unsigned\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\nBuildArch: noarch\n%description\nd\n%files\n"
    )
    repo = tmp_path / "repo"
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {tmp_path / 'top'}", "--define", f"_rpmdir {repo}", str(spec)],
        check=True,
        capture_output=True,
    )
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    s = DnfSession(
        tmp_path / "tree",
        DnfConfig(releasever="1", arch="x86_64", sources=(f"file://{repo}",), cachedir=tmp_path / "cache"),
        tmp_path / "work",
    )
    s.install(["unsigned"])
    with pytest.raises(ComposerError) as e:
        s.run_transaction()
    assert str(e.value) == (
        "dnf transaction failed: package unsigned-1-1.noarch.rpm is not signed: signature "
        "checks are on by default; give the repository's key (gpgkey= in a --repo file) "
        "or pass --nogpgcheck to trust the source as it is"
    )


# ------------------------------------------------------------------ which dnf


def _fake_programs(bindir: Path, **outputs: str) -> None:
    """Programs that print a --version line, as dnf 4, dnf5 and rpm do."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name, line in outputs.items():
        f = bindir / name.replace("_", "-")
        f.write_text(f"#!/bin/sh\necho '{line}'\n")
        f.chmod(0o755)


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    from composer.dnf import find_dnf

    find_dnf.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    yield tmp_path / "bin"
    find_dnf.cache_clear()


def test_a_host_whose_dnf_is_dnf5_gets_dnf5(fake_path):
    from composer.config import DnfChoice
    from composer.dnf import find_dnf

    _fake_programs(fake_path, dnf="dnf5 version 5.2.8.1", rpm="RPM version 4.20.0")
    program = find_dnf(DnfChoice.AUTO)
    assert (program.flavor, program.command, program.root) == (DnfChoice.DNF5, "dnf", None)
    assert find_dnf(DnfChoice.DNF5).command == "dnf"
    with pytest.raises(ComposerError, match=r"^--dnf dnf4: no dnf 4 on this host: "):
        find_dnf(DnfChoice.DNF4)


def test_fedora_41_with_dnf4_beside_dnf5(fake_path):
    from composer.config import DnfChoice
    from composer.dnf import find_dnf

    _fake_programs(fake_path, dnf="dnf5 version 5.2.8.1", dnf5="dnf5 version 5.2.8.1", dnf_3="4.21.1", rpm="RPM version 4.20.0")
    assert find_dnf(DnfChoice.DNF4).command == "dnf-3"
    assert find_dnf(DnfChoice.DNF5).command == "dnf5"
    assert find_dnf(DnfChoice.AUTO).flavor is DnfChoice.DNF5


def test_dnf5_asked_for_where_there_is_none(fake_path):
    from composer.config import DnfChoice
    from composer.dnf import find_dnf

    _fake_programs(fake_path, dnf="4.14.0", rpm="RPM version 4.18.0")
    assert find_dnf(DnfChoice.AUTO).flavor is DnfChoice.DNF4
    with pytest.raises(ComposerError) as e:
        find_dnf(DnfChoice.DNF5)
    assert str(e.value).startswith("--dnf dnf5: no dnf5 on this host: give --dnf-root DIR (or COMPOSER_DNF_ROOT)")
    assert "scripts/dnf5-root" in str(e.value)


def test_a_dnf_root_that_is_no_root(tmp_path):
    from composer.config import DnfChoice
    from composer.dnf import find_dnf

    with pytest.raises(ComposerError, match=r"--dnf-root .*: not a root directory \(no usr/bin"):
        find_dnf(DnfChoice.DNF5, tmp_path)
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    with pytest.raises(ComposerError, match=r"^--dnf dnf5: no dnf5 in --dnf-root "):
        find_dnf(DnfChoice.DNF5, tmp_path)


def test_cache_key_options_name_which_dnf(tmp_path):
    """dnf 4 and dnf5 write different rpm databases: their trees never share a cache entry."""
    from composer.config import DnfChoice
    from composer.dnf import DnfProgram

    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c")
    keys = {}
    for flavor, command, version, rpm, root in (
        (DnfChoice.DNF4, "dnf", "4.14.0", "RPM version 4.18.0", None),
        (DnfChoice.DNF5, "dnf5", "dnf5 version 5.4.6.0", "RPM version 6.1.0", tmp_path / "root"),
    ):
        s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
        s._program = DnfProgram(flavor, command, version, rpm, root)
        keys[flavor] = s.shaping_options()
        # Work paths stay out of the key, dnf's settings are in.
        local = [str(tmp_path / d) for d in ("tree", "work", "c", "root")]
        assert not any(w in a for a in keys[flavor] for w in local), keys[flavor]
        assert "--setopt=install_weak_deps=False" in keys[flavor] and "--setopt=tsflags=nodocs" in keys[flavor]
    assert keys[DnfChoice.DNF4][0] == "dnf4 4.14.0; RPM version 4.18.0"
    assert keys[DnfChoice.DNF5][0] == "dnf5 dnf5 version 5.4.6.0; RPM version 6.1.0"


def test_dnf5_state_and_locks_reach_the_host(tmp_path):
    """dnf5 puts the installroot in front of system_state_dir and of persistdir's lock:
    the values lead back out of the tree to the work directory."""
    import os

    from composer.config import DnfChoice
    from composer.dnf import DnfProgram

    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c")
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    s._program = DnfProgram(DnfChoice.DNF5, "dnf5", "dnf5 version 5.4.6.0", "RPM version 6.1.0", None)
    opts = dict(
        a.removeprefix("--setopt=").split("=", 1)
        for a in s._dnf_argv()
        if a.startswith("--setopt=")
        and a.split("=")[1] in ("system_state_dir", "persistdir", "cachedir", "system_cachedir", "logdir")
    )
    for name, value in opts.items():
        # Prefixed with the tree or not, the path is the same host directory.
        prefixed = os.path.normpath(str(tmp_path / "tree") + value)
        assert prefixed == os.path.normpath(value) and not prefixed.startswith(str(tmp_path / "tree")), (name, value)
    assert os.path.normpath(opts["system_state_dir"]) == str(tmp_path / "work" / "dnf-state")


def test_a_dnf_root_cannot_take_host_paths_in_its_own_etc(tmp_path):
    from composer.dnf.sandbox import root_sandbox

    (tmp_path / "root" / "usr").mkdir(parents=True)
    (tmp_path / "root" / "etc").mkdir()
    argv = root_sandbox(tmp_path / "root", rw=[tmp_path / "work"], ro=[tmp_path / "repo"])
    assert (
        argv[:3] == ["bwrap", "--tmpfs", "/"]
        and ["--ro-bind", str(tmp_path / "root" / "usr"), "/usr"] == argv[argv.index("/usr") - 2 : argv.index("/usr") + 1]
    )
    with pytest.raises(ComposerError, match=r"/etc/pki/rpm-gpg: lies in /etc, which --dnf-root .* provides itself"):
        root_sandbox(tmp_path / "root", ro=[Path("/etc/pki/rpm-gpg")])


@pytest.mark.parametrize(
    "args,env,expected",
    [
        (["--dnf", "dnf5"], {}, "--dnf dnf5: no dnf5 on this host: give --dnf-root DIR"),
        (["--dnf-root", "/nonexistent"], {}, "--dnf-root /nonexistent: no such directory"),
        ([], {"COMPOSER_DNF_ROOT": "/nonexistent"}, "COMPOSER_DNF_ROOT /nonexistent: no such directory"),
        (["--dnf", "dnf7"], {}, "argument --dnf: invalid choice: 'dnf7'"),
    ],
)
def test_dnf_options_fail_in_one_line(tmp_path, args, env, expected):
    import os
    import shutil

    from tests.conftest import composer

    if "dnf5" in args and shutil.which("dnf5"):
        pytest.skip("this host has dnf5")
    out = tmp_path / "out"
    proc = composer(
        "runtime",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        fake_repo(tmp_path),
        "--cachedir",
        str(tmp_path / "cache"),
        "--workdir",
        str(tmp_path / "work"),
        *args,
        str(out),
        check=False,
        env={**os.environ, **env},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert expected in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not out.exists() and not (tmp_path / "work").exists()


def test_dnf_reason_says_disk_space():
    from composer.dnf.programs import dnf_reason

    stderr = (
        "Error: Transaction test error:\n  installing package systemd-252 needs 12MB more space on the "
        "/w/tree filesystem\n\nError Summary\n-------------\nDisk Requirements:\n"
        "   At least 450MB more space needed on the /w/tree filesystem.\n\n"
    )
    assert dnf_reason(stderr) == (
        "not enough disk space for the tree: At least 450MB more space needed on the "
        "/w/tree filesystem. (free some, or give --workdir elsewhere)"
    )


def test_lorax_repository_options_on_dnf4_and_dnf5_command_lines(tmp_path, monkeypatch):
    from composer.config import DnfChoice
    from composer.dnf import DnfProgram

    mirrorlist = tmp_path / "mirrorlist"
    mirrorlist.write_text(f"# a comment\n{fake_repo(tmp_path)}\n")
    cfg = DnfConfig(
        releasever="1",
        arch="x86_64",
        mirrorlists=(f"file://{mirrorlist}",),
        cachedir=tmp_path / "c",
        proxy="http://proxy.example.com:3128",
        sslverify=False,
        enablerepos=("updates-*",),
        disablerepos=("updates-testing",),
    )
    keys = {}
    for flavor, enable, disable in (
        (DnfChoice.DNF4, "--enablerepo", "--disablerepo"),
        (DnfChoice.DNF5, "--enable-repo", "--disable-repo"),
    ):
        s = DnfSession(tmp_path / "tree", cfg, tmp_path / f"work-{flavor}")
        s._program = DnfProgram(flavor, "dnf", "x", "rpm x")
        argv = s._dnf_argv()
        # lorax enables, then disables.
        assert argv.index(f"{enable}=updates-*") < argv.index(f"{disable}=updates-testing")
        assert "--setopt=sslverify=False" in argv and not any("proxy" in a for a in argv)
        # The mirrorlist is a repository of its own, checked like a --source; the proxy is its option.
        (repo,) = (s.reposdir).glob("composer-mirror*.repo")
        assert f"mirrorlist=file://{mirrorlist}\n" in repo.read_text() and "gpgcheck=1\n" in repo.read_text()
        assert "proxy=http://proxy.example.com:3128\n" in repo.read_text()
        keys[flavor] = s.shaping_options()
        assert not any("proxy" in a or "sslverify" in a for a in keys[flavor]), "how packages are fetched shaped the key"
        assert f"{enable}=updates-*" in keys[flavor]


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("proxy", "proxy.example.com:3128", "--proxy 'proxy.example.com:3128': not a proxy URL"),
        ("proxy", "http://a b", "--proxy 'http://a b': not a proxy URL"),
        ("enablerepos", ("a b",), "--enablerepo 'a b': not a repository id or glob"),
        ("disablerepos", ("",), "--disablerepo '': not a repository id or glob"),
        ("mirrorlists", ("gopher://x/",), "--mirrorlist gopher://x/: not a URL"),
    ],
)
def test_bad_repository_options_are_named(tmp_path, field, value, msg):
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c", **{field: value})
    with pytest.raises(ComposerError, match=f"^{re.escape(msg)}"):
        DnfSession(tmp_path / "tree", cfg, tmp_path / "work")


def test_a_local_mirrorlist_is_checked(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    cfg = DnfConfig(releasever="1", arch="x86_64", mirrorlists=(f"file://{empty}",), cachedir=tmp_path / "c")
    with pytest.raises(ComposerError, match="lists no repository"):
        DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    bad = tmp_path / "bad"
    bad.write_text("file:///nonexistent/repo\n")
    cfg = DnfConfig(releasever="1", arch="x86_64", mirrorlists=(f"file://{bad}",), cachedir=tmp_path / "c")
    with pytest.raises(ComposerError, match=f"--mirrorlist file://{bad}: lists file:///nonexistent/repo: no repository"):
        DnfSession(tmp_path / "tree", cfg, tmp_path / "work")


def test_dnf_logs_where_asked(tmp_path):
    """composer lorax: dnf's logs beside --logfile, as lorax; else in the work directory."""
    cfg = DnfConfig(
        releasever="1", arch="x86_64", sources=(fake_repo(tmp_path),), cachedir=tmp_path / "c", logdir=tmp_path / "logs"
    )
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    (logdir,) = [a.removeprefix("--setopt=logdir=") for a in s._dnf_argv() if a.startswith("--setopt=logdir=")]
    assert os.path.normpath(str(tmp_path / "tree") + "/" + logdir) == str(tmp_path / "logs")  # dnf 4 prefixes the root
    assert (tmp_path / "logs").is_dir()


def test_a_repository_through_a_link_is_bound_where_dnf_is_told_it_is(tmp_path):
    """dnf reads file://LINK; the sandbox's private /tmp must hold LINK's place too
    (it once held only the target's, and dnf found no repomd.xml)."""
    from composer.dnf.sandbox import host_sandbox

    real = tmp_path / "repo"
    real.mkdir()
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "repo"
    link.symlink_to(real)
    argv = host_sandbox(ro=[link])
    pairs = [tuple(argv[i : i + 3]) for i, a in enumerate(argv) if a == "--ro-bind"]
    assert ("--ro-bind", str(real), str(real)) in pairs and ("--ro-bind", str(real), str(link)) in pairs, argv
