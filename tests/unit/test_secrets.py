"""Credentials of package sources stay secret (issue 20): out of every command line composer
runs, out of dnf's logs and of what composer prints, and masked where a URL is shown.
The slow end-to-end check (a compose over HTTP with basic auth and a proxy, every file it
wrote grepped) is tests/integration/test_secrets.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from composer.config import DnfChoice
from composer.dnf import DnfConfig, DnfProgram, DnfSession, check_repofile, read_repofile, split_userinfo
from composer.dnf.sandbox import host_sandbox
from composer.run import ComposerError, redact

SECRETS = ("src-Pw!1", "mirror-Pw2", "file-Pw3", "meta-Pw4", "proxy-Pw5", "fileproxy-Pw6")


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://u:p4ss@host/os/", ("http://host/os/", "u", "p4ss")),
        ("https://alice@host:8443/x", ("https://host:8443/x", "alice", None)),
        ("http://u:p%40ss%21@host/", ("http://host/", "u", "p@ss!")),  # percent-decoded, as curl sends it
        ("http://u:p@ss@host/path@x", ("http://host/path@x", "u", "p@ss")),  # the host follows the last @
        ("file:///srv/repo", ("file:///srv/repo", None, None)),
        ("http://host/a@b", ("http://host/a@b", None, None)),  # an @ in the path is no userinfo
    ],
)
def test_split_userinfo(url, expected):
    assert split_userinfo(url) == expected
    if expected[2]:
        assert expected[2] not in redact(f"dnf said: {expected[2]}"), "the password is not a secret"


def _repofile(tmp_path: Path, repo: str) -> Path:
    f = tmp_path / "private.repo"
    f.write_text(
        f"[private]\nname=Private\nbaseurl=http://fuser:file-Pw3@repo.example/os/\n  {repo}\n"
        "gpgcheck=0\n\n[meta]\nmetalink=https://muser:meta-Pw4@repo.example/metalink\n"
        "proxy=http://puser:fileproxy-Pw6@proxy.example:3128\n\n"
        "[creds]\nbaseurl=https://repo.example/creds/\nusername=cuser\npassword=opt-Pw7\n"
    )
    return f


def test_one_reading_of_a_repo_file_registers_its_passwords(tmp_path):
    f = _repofile(tmp_path, "file:///srv/os")
    sections = read_repofile(f)
    assert [s.name for s in sections] == ["private", "meta", "creds"]
    assert sections[0].get("baseurl").split() == ["http://fuser:file-Pw3@repo.example/os/", "file:///srv/os"]
    assert sections[2].line_of("password") == 14
    text = redact("password=opt-Pw7 proxy_password=fileproxy-Pw6 file-Pw3 meta-Pw4")
    assert not any(s in text for s in ("opt-Pw7", "fileproxy-Pw6", "file-Pw3", "meta-Pw4")), text


def test_a_bad_url_in_a_repo_file_is_named_with_its_line_and_masked(tmp_path):
    f = tmp_path / "bad.repo"
    f.write_text("[x]\nname=x\nbaseurl=http://u:bad-Pw8@ host/\n")
    with pytest.raises(ComposerError, match=rf"--repo {f}:3: \[x\] baseurl") as e:
        check_repofile(f)
    assert "bad-Pw8" not in redact(str(e.value))


def _session(tmp_path: Path, flavor: DnfChoice, root: Path | None, **over) -> DnfSession:
    mirrorlist = "https://muser:mirror-Pw2@mirrors.example/list?arch=x86_64"
    f = _repofile(tmp_path, f"file://{tmp_path / 'local'}")
    settings = {"proxy": "http://proxyuser:proxy-Pw5@proxy.example:3128", **over}
    cfg = DnfConfig(
        releasever="1",
        arch="x86_64",
        sources=("https://suser:src-Pw!1@repo.example/os/",),
        mirrorlists=(mirrorlist,),
        repofiles=(f,),
        cachedir=tmp_path / "cache",
        disablerepos=("*",),
        **settings,
    )
    s = DnfSession(tmp_path / "work" / "tree", cfg, tmp_path / "work")
    s._program = DnfProgram(flavor, str(flavor), "x", "rpm x", root)
    return s


@pytest.mark.parametrize("flavor", [DnfChoice.DNF4, DnfChoice.DNF5])
def test_no_command_line_holds_a_credential(tmp_path, flavor):
    """dnf's and bubblewrap's argv (what `ps` shows every user), on the host and in a --dnf-root."""
    (tmp_path / "local").mkdir()
    root = tmp_path / "root"
    for d in ("usr/bin", "etc"):
        (root / d).mkdir(parents=True)
    for r in (None, root):
        s = _session(tmp_path, flavor, r)
        argv = " ".join(s._sandbox(transaction=True) + s._dnf_argv() + s.shaping_options())
        for secret in (*SECRETS, "opt-Pw7", "suser", "proxyuser"):
            assert secret not in argv, (secret, argv)
        # The --source is not the --disablerepo's to switch off, as it was with --repofrompath.
        assert argv.index("able-repo=*" if flavor is DnfChoice.DNF5 else "ablerepo=*") < argv.index("source0-")


def test_credentials_reach_dnf_only_in_0600_files_while_it_runs(tmp_path):
    (tmp_path / "local").mkdir()
    s = _session(tmp_path, DnfChoice.DNF4, None)
    files = sorted(s.reposdir.iterdir())
    assert [f.name for f in files] == ["composer-mirrors.repo", "composer-sources.repo", "repo0-private.repo"]
    assert stat.S_IMODE(os.stat(s.reposdir).st_mode) == 0o700

    def text() -> str:
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        return "".join(f.read_text() for f in files)

    masked = text()
    assert not any(secret in masked for secret in (*SECRETS, "opt-Pw7", "suser", "muser", "puser")), masked
    assert "baseurl=https://repo.example/os/\n" in masked and "username=***\npassword=***\n" in masked
    with s._credentials():
        given = text()
    # Each repository gets its own URL's credentials (and the proxy's, if it names no proxy
    # of its own), as options: URLs without userinfo are what librepo logs.
    for option in (
        "username=suser\npassword=src-Pw!1\n",
        "mirrorlist=https://mirrors.example/list?arch=x86_64\n",
        "username=muser\npassword=mirror-Pw2\n",
        "baseurl=http://repo.example/os/\n  file://",
        "username=fuser\npassword=file-Pw3\n",
        "metalink=https://repo.example/metalink\n",
        "proxy=http://proxy.example:3128\n",
        "proxy_username=puser\nproxy_password=fileproxy-Pw6\n",
        "proxy_password=proxy-Pw5\n",
        "username=cuser\npassword=opt-Pw7\n",
    ):
        assert option in given, (option, given)
    assert "@" not in given
    assert text() == masked


def test_a_password_changes_no_cache_key(tmp_path):
    for d in ("local", "a", "b"):
        (tmp_path / d).mkdir()
    a = _session(tmp_path / "a", DnfChoice.DNF4, None, sslverify=False)
    b = _session(tmp_path / "b", DnfChoice.DNF4, None, proxy="http://other:x-Pw@proxy.example:3128")
    strip = [str(tmp_path / "a"), str(tmp_path / "b")]

    def key(s: DnfSession) -> list[str]:
        out = s.shaping_options()
        for p in strip:
            out = [x.replace(p, "") for x in out]
        return out

    assert key(a) == key(b)
    assert "repo source0-os: baseurl=https://repo.example/os/" in key(a)


def test_dnf_logs_are_scrubbed_of_what_dnf_was_not_given(tmp_path):
    """A mirror list may list URLs with credentials: librepo logs them as it fetches."""
    (tmp_path / "local").mkdir()
    s = _session(tmp_path, DnfChoice.DNF4, None)
    split_userinfo("http://x:listed-Pw9@mirror.example/")
    (s.logdir / "dnf.librepo.log").write_text("Downloading: http://x:listed-Pw9@mirror.example/repomd.xml\n")
    (s.logdir / "other.log").write_text("listed-Pw9\n")  # not dnf's: left alone
    with s._credentials():
        pass
    assert (s.logdir / "dnf.librepo.log").read_text() == "Downloading: http://***@mirror.example/repomd.xml\n"
    assert (s.logdir / "other.log").read_text() == "listed-Pw9\n"


def test_the_host_dnf_gets_a_private_tmp(tmp_path):
    """libdnf's /tmp/tmpdir.XXXXXX (whatever TMPDIR says) dies with dnf's tmpfs; paths
    below /tmp are bound back in."""
    (tmp_path / "work").mkdir()
    argv = host_sandbox(rw=[tmp_path / "work"], ro=[Path("/usr/share"), tmp_path / "nonexistent"])
    assert argv[:6] == ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/tmp"]
    w = str((tmp_path / "work").resolve())
    assert argv[6:] == (["--bind", w, w] if w.startswith("/tmp/") else []), argv


def test_kickstart_credentials_stay_out_of_its_report(tmp_path, capsys):
    from composer.config import Config
    from composer.kickstart import config_with_kickstart

    ks = tmp_path / "k.ks"
    ks.write_text(
        "url --url=https://kuser:ks-Pw10@repo.example/os/ --proxy=http://p:ksproxy-Pw11@proxy:3128\n"
        "repo --name=x --baseurl=https://r:ksrepo-Pw12@repo.example/x/\n"
    )
    cfg, parsed = config_with_kickstart(Config(product="TestProduct", version="1", outdir=tmp_path / "out"), ks)
    assert parsed is not None and "url --proxy" not in parsed.unused  # the url's repository's own proxy
    assert cfg.repo_options == (("https://kuser:ks-Pw10@repo.example/os/", (("proxy", "http://p:ksproxy-Pw11@proxy:3128"),)),)
    err = capsys.readouterr().err
    assert "2 sources" in err and not any(s in err for s in ("ks-Pw10", "ksproxy-Pw11", "ksrepo-Pw12")), err
    assert "ksproxy-Pw11" not in redact("ksproxy-Pw11")


def test_cli_errors_mask_credentials(tmp_path):
    """The one error line: a bad --proxy and an unreachable --source, each with a password."""
    from tests.conftest import composer

    base = [
        "runtime",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--cachedir",
        str(tmp_path / "c"),
        "--workdir",
        str(tmp_path / "w"),
    ]
    proc = composer(
        *base, "--source", "http://127.0.0.1:9/", "--proxy", "http://u:cli-Pw13@ bad", str(tmp_path / "o"), check=False
    )
    assert proc.returncode != 0 and "--proxy" in proc.stderr and "cli-Pw13" not in proc.stderr, proc.stderr
    proc = composer(*base, "--source", "http://u:cli-Pw14@127.0.0.1:9/", str(tmp_path / "o"), check=False)
    assert proc.returncode != 0 and "cli-Pw14" not in proc.stderr, proc.stderr
    assert "http://***@127.0.0.1:9/" in proc.stderr.strip().splitlines()[-1], proc.stderr
