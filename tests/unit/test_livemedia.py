"""`composer livemedia` (livemedia-creator's --no-virt command line): what it refuses, in one
line, and the kickstart model it builds (composer.kickstart.load_live_kickstart)."""

from __future__ import annotations

import re
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest

from composer.kickstart import load_live_kickstart
from composer.kickstart.system import Password
from composer.run import ComposerError
from tests.conftest import composer

ROOT = Path(__file__).resolve().parents[2]
LIVE_KS = ROOT / "tools" / "testproduct" / "live.ks"


def _ks(tmp_path: Path, text: str = "") -> Path:
    """The test product's live kickstart with a local repository, plus `text`."""
    (tmp_path / "repo" / "repodata").mkdir(parents=True, exist_ok=True)
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd/>\n")  # what the source check looks for
    ks = tmp_path / "live.ks"
    ks.write_text(LIVE_KS.read_text().replace("@REPO@", f"file://{tmp_path}/repo") + text)
    return ks


def _lmc(tmp_path: Path, *args: str):
    base = ("livemedia", "--no-virt", "--project", "TestProduct", "--releasever", "1")
    where = ("--tmp", str(tmp_path / "tmp"), "--resultdir", str(tmp_path / "out"), "--logfile", str(tmp_path / "lmc.log"))
    return composer(*base, *where, *args, check=False)


def _one_line_error(proc, status: int = 1) -> str:
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--make-iso", "--virt-uefi"), "--virt-uefi: needs the VM's UEFI boot; composer livemedia runs the --no-virt path only"),
        (("--make-iso", "--ram", "4096"), "--ram: needs the VM's memory"),
        (("--make-iso", "--kernel-args", "quiet"), "--kernel-args: needs the installer's kernel in the VM"),
        (("--make-iso", "--vnc", "vnc"), "--vnc: needs the VM's display"),
        (("--make-iso", "--image-only"), "--image-only: needs anaconda's image"),
        (("--make-ami",), "--make-ami: needs anaconda's disk image"),
        (("--make-vagrant",), "--make-vagrant: needs anaconda's disk image"),
        (("--make-oci",), "--make-oci: needs anaconda's disk image"),
        (("--make-ostree-live",), "--make-ostree-live: needs anaconda's ostree install"),
        (("--make-disk", "--disk-image", "x.img"), "--disk-image: not yet supported by composer livemedia"),
        (("--make-iso", "--qcow2"), "--qcow2: not yet supported"),
        (("--make-tar", "--compression", "zstd"), "--compression zstd: for --make-tar one of xz, lzma, gzip, bzip2"),
        (("--make-iso", "--compression", "gzip"), "--compression gzip: for the squashfs image one of xz, zstd, lz4"),
        (("--make-iso", "--compress-arg", "-Xbcj"), "--compress-arg: not yet supported for the squashfs image"),
        (("--make-tar", "--image-name", "a/b.tar"), "--image-name 'a/b.tar': a file name in --resultdir, not a path"),
        (("--make-iso", "--timeout", "0"), "--timeout 0: minutes, at least 1"),
        (("--make-iso",), "--ks: a kickstart is required"),
        (("--make-iso", "--ks", "/nonexistent/x.ks"), "--ks /nonexistent/x.ks: no such file"),
        (("--make-iso", "--dracut-arg", "--xz", "--dracut-conf", "/etc/hostname"), "--dracut-arg and --dracut-conf"),
    ],
)
def test_refused_in_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    line = _one_line_error(_lmc(tmp_path, *args))
    assert expected in line
    assert not (tmp_path / "out").exists()


def test_fsimage_type_is_checked_before_the_build(tmp_path: Path) -> None:
    ks = tmp_path / "xfs.ks"
    ks.write_text(_ks(tmp_path).read_text().replace("part / --fstype=ext4", "part / --fstype=xfs"))
    line = _one_line_error(_lmc(tmp_path, "--make-fsimage", "--ks", str(ks)))
    assert "part / --fstype=xfs: --make-fsimage makes ext4, btrfs, erofs" in line
    assert not (tmp_path / "lmc.log").read_text().count("install ...")


def test_osmin_needs_ext4_before_the_build(tmp_path: Path) -> None:
    line = _one_line_error(_lmc(tmp_path, "--make-iso", "--osmin", "--ks", str(_ks(tmp_path))))
    assert "--osmin: needs --rootfs-type squashfs-ext4 (not btrfs)" in line
    assert not (tmp_path / "out").exists()


def test_one_make_is_required(tmp_path: Path) -> None:
    line = _one_line_error(_lmc(tmp_path, "--ks", "x.ks"), status=2)
    assert "one of the arguments --make-iso" in line
    line = _one_line_error(_lmc(tmp_path, "--make-iso", "--make-tar"), status=2)
    assert "not allowed with argument" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("liveimg --url=http://example.com/x.img\n", "liveimg: not supported by composer livemedia"),
        ("authselect select sssd\n", "authselect: not supported by composer livemedia"),
        ("%pre-install\ntrue\n%end\n", "%pre-install: not supported by composer livemedia"),
        ("selinux --bogus\n", "unrecognized arguments: --bogus"),
        ("timezone ../../../etc/shadow\n", "timezone '../../../etc/shadow': not a time zone name"),
    ],
)
def test_kickstart_refusals_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    ks = _ks(tmp_path, text)
    line = _one_line_error(_lmc(tmp_path, "--make-tar", "--ks", str(ks)))
    assert expected in line
    assert f"{ks}:" in line  # FILE:LINE
    assert not (tmp_path / "out").exists()


def test_live_kickstart_model(tmp_path: Path) -> None:
    ks = load_live_kickstart(_ks(tmp_path))
    s = ks.system
    assert (s.lang, s.keymap, s.timezone, s.utc, s.hostname) == ("en_US.UTF-8", "us", "Etc/UTC", True, "composer-live")
    assert s.rootpw == Password(lock=True)
    (user,) = s.users
    assert (user.name, user.uid, user.shell, user.groups) == ("tester", 1500, "/bin/bash", ("livetest", "wheel"))
    assert user.password.value == "Composer-Live-Pw1" and not user.password.crypted
    assert s.groups == (("livetest", 4321),)
    assert s.sshkeys[0][0] == "tester" and s.sshkeys[0][1].startswith("ssh-ed25519 ")
    assert (s.enabled, s.disabled) == (("composer-boot-check.service",), ("apt-daily.timer",))
    assert (s.selinux, s.firewall, s.root_fstype) == ("permissive", ("--disabled",), "ext4")
    kinds = [(x.kind, x.chroot, x.error_on_fail) for x in s.scripts]
    assert kinds == [("%pre", False, False), ("%post", True, True), ("%onerror", False, False), ("%post", False, False)]
    assert set(s.ignored) == {"zerombr", "clearpart", "reboot"}
    assert ks.packages.kernel_args == ("composer.live=1",)
    assert "testproduct-setup" in ks.packages.installpkgs and ks.packages.excludepkgs == ("nbd-client", "@core")


def test_not_yet_is_named(tmp_path: Path) -> None:
    text = f"repo --name=extra --baseurl=file://{tmp_path}/repo --includepkgs=a,b* --cost=5 --sslcacert=/ca.pem\n"
    ks = load_live_kickstart(_ks(tmp_path, text).rename(tmp_path / "x.ks"))
    assert ks.not_yet == ()  # --includepkgs and --cost are the repository's dnf options
    assert ks.packages.repo_options == ((f"file://{tmp_path}/repo", (("includepkgs", "a,b*"), ("cost", "5"))),)
    assert "repo extra --sslcacert" in ks.packages.unused
    assert ks.install_langs is None  # every translation, as anaconda without --instLangs
    assert not ks.ignore_missing
    assert ks.system.scripts[1].log == "/root/ks-post.log"
    plain = tmp_path / "plain.ks"
    assert (ks.nodocs, ks.weak_deps) == (False, True)  # anaconda: docs and weak deps unless told not to
    text = (
        (tmp_path / "x.ks").read_text().replace("%packages --nocore", "%packages --excludedocs --excludeWeakdeps --ignoremissing")
    )
    plain.write_text(re.sub(r"%post --nochroot --log=\S+", "%post --nochroot --log=/x.log", text))
    ks = load_live_kickstart(plain)
    assert ks.ignore_missing
    assert (ks.nodocs, ks.weak_deps) == (True, False)  # honoured, so not named as not yet
    assert not any("--exclude" in n for n in ks.not_yet), ks.not_yet
    assert ks.packages.installpkgs[0] == "@core"  # without --nocore (tests/unit/test_kickstart_groups.py)
    assert ks.not_yet == () and ks.system.scripts[-1].log == "/x.log"  # --nochroot --log: keep_log
    for langs in ("de:pt_BR", ""):  # "": no translations at all (anaconda's %{nil})
        plain.write_text(text.replace("--ignoremissing", f"--instLangs={langs}"))
        assert load_live_kickstart(plain).install_langs == langs


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("repo --name=x --baseurl=@REPO@ --proxy=ftp://p", "repo --proxy 'ftp://p': not a proxy URL"),
        ("repo --name=x --baseurl=@REPO@ --excludepkgs='a b'", "repo --excludepkgs: 'a b' is not a package name or glob"),
        ("url --url=@REPO@ --proxy=nonsense", "url --proxy 'nonsense': not a proxy URL"),
    ],
)
def test_bad_repository_options_name_the_line(tmp_path: Path, line: str, expected: str) -> None:
    ks = _ks(tmp_path, line.replace("@REPO@", f"file://{tmp_path}/repo") + "\n")
    message = _one_line_error(_lmc(tmp_path, "--make-tar", "--ks", str(ks)))
    assert expected in message and f"{ks}:" in message


def test_bad_install_langs_name_the_section(tmp_path: Path) -> None:
    ks = _ks(tmp_path)
    ks.write_text(ks.read_text().replace("%packages --nocore", "%packages --nocore --instLangs=de;rm"))
    message = _one_line_error(_lmc(tmp_path, "--make-tar", "--ks", str(ks)))
    assert "--instLangs='de;rm': give languages separated by ':'" in message and f"{ks}:" in message


def test_passwords_never_shown() -> None:
    assert "secret" not in repr(Password(value="secret"))


def test_include_is_followed(tmp_path: Path) -> None:
    part = tmp_path / "users.ks"
    part.write_text("user --name=included\n")
    ks = load_live_kickstart(_ks(tmp_path, f"%include {part}\n"))
    assert [u.name for u in ks.system.users] == ["tester", "included"]


def test_refused_command_raises_with_line(tmp_path: Path) -> None:
    ks = _ks(tmp_path, "ostreesetup --osname=x --url=http://e/r --ref=x\n")
    with pytest.raises(ComposerError, match=r"live\.ks:\d+: ostreesetup: not supported"):
        load_live_kickstart(ks)


def test_help_and_entry_point() -> None:
    proc = composer("livemedia", "--help")
    assert "--make-iso" in proc.stdout and "--no-virt" in proc.stdout
    scripts = tomllib.loads((ROOT / "extras" / "lorax" / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["livemedia-creator"] == "composer.cli:livemedia_creator"
    from composer import cli

    assert callable(cli.livemedia_creator)


def test_pre_erroronfail_runs_onerror_and_stops_clean(tmp_path: Path) -> None:
    """A failing %pre --erroronfail (run for real, before any package is installed): %onerror
    runs, the build stops in one line naming the script, and leaves no result or work directory."""
    # Host-side scripts see a /tmp of the build's own: the mark goes where the test can read it.
    mark = Path(tempfile.mkdtemp(dir=ROOT / "build" if (ROOT / "build").is_dir() else Path.home())) / "onerror-ran"
    text = f'%pre --erroronfail\necho "pre out"; exit 3\n%end\n%onerror\necho yes > "{mark}"\n%end\n'
    ks = _ks(tmp_path, text)
    proc = _lmc(tmp_path, "--make-tar", "--ks", str(ks))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("composer: error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line.endswith(": pre out")  # the script's last line of output
    assert re.search(r"kickstart %pre \(line \d+, --nochroot\): failed with exit status 3 \(--erroronfail\)", line), line
    try:
        assert mark.read_text() == "yes\n"
    finally:
        shutil.rmtree(mark.parent)
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_pre_failure_without_erroronfail_goes_on(tmp_path: Path) -> None:
    """Without --erroronfail a failed %pre is reported and the build goes on (here to the
    install, which fails on the empty repository: that it got there is the point)."""
    ks = _ks(tmp_path, "%pre\nexit 4\n%end\n")
    proc = _lmc(tmp_path, "--make-tar", "--ks", str(ks))
    assert "exit status 4, going on as anaconda does" in (tmp_path / "lmc.log").read_text()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_iso_only_keeps_the_iso_alone(tmp_path: Path) -> None:
    from composer.pipelines.livemedia import keep_only
    from composer.run import LOCK_MARKER

    out, work = tmp_path / "out", tmp_path / "work"
    (out / "images").mkdir(parents=True)
    (out / "LiveOS").mkdir()
    (out / "images" / "boot.iso").write_bytes(b"iso")
    (out / "LiveOS" / "squashfs.img").write_bytes(b"sq")
    (out / ".treeinfo").write_text("x")
    (out / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    (out / LOCK_MARKER).write_text("1")
    work.mkdir()
    kept = keep_only(out, out / "images" / "boot.iso", "live.iso", work)
    assert kept == out / "live.iso" and kept.read_bytes() == b"iso"
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_MARKER, "live.iso"])
    assert (tmp_path / "elsewhere").is_dir()  # a link is removed, never followed


def test_accepted_but_not_honoured_is_named(tmp_path: Path) -> None:
    ks = _ks(tmp_path, "%pre --erroronfail\nexit 1\n%end\n")  # stops the build right after the report
    proc = _lmc(tmp_path, "--make-iso", "--macboot", "--live-rootfs-keep-size", "--ks", str(ks))
    assert proc.returncode == 1
    assert "accepted but not honoured as livemedia-creator does: --macboot (no Mac boot image); --live-rootfs-keep-size" in (
        proc.stderr
    )


def test_host_side_scripts_share_one_tmp_of_the_build(tmp_path: Path) -> None:
    """%pre and %post --nochroot see the same /tmp (the build's own, not the host's), as
    anaconda's share the installer's."""
    from composer.kickstart.apply import script_argv
    from composer.kickstart.system import Script

    pre, post = tmp_path / "pre-0", tmp_path / "post-0"
    a = script_argv(Script("%pre", "", "/bin/sh", chroot=False), pre, None)
    b = script_argv(Script("%post", "", "/bin/sh", chroot=False), post, tmp_path / "tree")
    bind = ["--bind", str(tmp_path / "tmp"), "/tmp"]
    for argv in (a, b):
        assert any(argv[i : i + 3] == bind for i in range(len(argv))), argv
    assert (tmp_path / "tmp").is_dir()


def test_a_host_side_scripts_log_is_the_installers(tmp_path: Path, capsys) -> None:
    """--log of %pre and %post --nochroot: /tmp is the build's shared /tmp (a %post --nochroot
    copies a %pre's log from there, as Fedora's kickstarts do); a path of the installer's own
    filesystem is named, not written on the build host."""
    from composer.kickstart.apply import keep_log
    from composer.kickstart.system import Script

    shared = tmp_path / "tmp"
    for log in ("/tmp/ks-pre.log", "/tmp/../tmp/ks-pre.log"):
        keep_log(Script("%pre", "true", "/bin/sh", chroot=False, log=log), b"pre ran\n", shared, None, "kickstart %pre")
    assert (shared / "ks-pre.log").read_bytes() == b"pre ran\npre ran\n"
    script = Script("%pre", "true", "/bin/sh", chroot=False, log="/tmp/../etc/ks.log")
    keep_log(script, b"x", shared, None, "kickstart %pre (line 3)")
    named = "kickstart %pre (line 3): --log=/tmp/../etc/ks.log: a file of the installer's own filesystem"
    assert named in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ks-pre.log", "tmp"]
