"""Bad input: one clear line naming the option or file, exit 1, no traceback, nothing left."""

from pathlib import Path

import pytest

from tests.conftest import composer


def fake_repo(tmp_path):
    (tmp_path / "repo" / "repodata").mkdir(parents=True)
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd/>")
    return f"file://{tmp_path / 'repo'}"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--add-template-var", "no equals sign"], "--add-template-var"),
        (["--add-template-var", "1bad=x"], "--add-template-var"),
        (["--rootfs-size", "huge"], "--rootfs-size: not a size"),
        (["--source", "file:///nonexistent"], "--source file:///nonexistent: no repository there"),
        (["--source", "ftp//typo"], "--source ftp//typo: not a URL"),
        (["--repo", "/nonexistent.repo"], "--repo /nonexistent.repo: no such file"),
        (["--product", "NoSuchOS"], "--product NoSuchOS"),
        (["--osmin"], "--osmin: needs --rootfs-type ext4 (not btrfs)"),
        (["--source-date-epoch", "-5"], "--source-date-epoch -5: must not be negative"),
    ],
)
def test_bad_option_is_one_line(tmp_path, args, expected):
    out = tmp_path / "out"
    base = [
        "runtime",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--cachedir",
        str(tmp_path / "cache"),
        "--workdir",
        str(tmp_path / "work"),
    ]
    if "--source" not in args and "--repo" not in args:
        base += ["--source", fake_repo(tmp_path)]
    proc = composer(*base, *args, str(out), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("composer: error:") and expected in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not list((tmp_path / "work").glob("*")) if (tmp_path / "work").exists() else True


def test_existing_outdir_is_refused_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("user data")
    proc = composer(
        "runtime", "--product", "TestProduct", "--version", "1", "--source", fake_repo(tmp_path), str(out), check=False
    )
    assert proc.returncode == 1 and "exists (use --force" in proc.stderr
    assert (out / "keep").read_text() == "user data"


def test_verify_missing_kernel(tmp_path):
    proc = composer("verify", "--kernel", str(tmp_path / "nope"), "--initrd", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 1 and "--kernel" in proc.stderr and "Traceback" not in proc.stderr


def test_min_memory_report_bisects_with_the_given_boot(capsys):
    """--min-memory for any boot kind (kernel+initrd, ISO): the floor on the --step grid."""
    import argparse

    from composer.cli.verify import report_min_memory
    from composer.verify import BootResult

    tried = []

    def boot(kernel, initrd, *, memory_mb, log, timeout, accel, marker):
        assert marker == "HELLO"  # --marker reaches every boot
        tried.append(memory_mb)
        return BootResult(
            ok=memory_mb >= 300,
            seconds=1.0 if memory_mb >= 400 else 2.0,  # slower than 1.5x below 400 MB
            reason="" if memory_mb >= 300 else "panic",
            marker_line="",
            log=log,
            memory_mb=memory_mb,
        )

    args = argparse.Namespace(range="128-512", step=16, log=None, timeout=10, accel="tcg", marker="HELLO")
    assert report_min_memory(args, None, None, boot=boot) == 0
    out = capsys.readouterr().out.strip()
    assert out == "min-memory: 400 MB usable, 304 MB reached (step 16 MB; usable: the marker within 1.5x the 1 s at 512 MB)"
    assert tried[0] == 512 and len(tried) <= 1 + 5 + 5


def test_dracut_arg_values_may_look_like_options():
    from composer.cli import _glue_pass_through

    argv = ["runtime", "--dracut-arg", "--add", "--dracut-arg", "nfs", "--force", "OUT"]
    assert _glue_pass_through(argv) == ["runtime", "--dracut-arg=--add", "--dracut-arg=nfs", "--force", "OUT"]


def test_verify_defaults_are_the_test_products():
    """verify.py knows no product; the command line's defaults are the test product's."""
    from composer.cli import build_parser
    from testproduct import BOOT_MARKER, CHECK_ARGS

    args = build_parser().parse_args(["verify", "--kernel", "k", "--initrd", "i"])
    assert (args.marker, args.check_args) == (BOOT_MARKER, CHECK_ARGS)
    verify_py = (Path(__file__).resolve().parents[2] / "src/composer/verify.py").read_text()
    assert BOOT_MARKER not in verify_py and CHECK_ARGS not in verify_py


def test_verify_press_enter_is_for_an_iso(tmp_path):
    proc = composer("verify", "--kernel", str(tmp_path / "k"), "--initrd", str(tmp_path / "i"), "--press-enter", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("composer: error: --press-enter: only with --iso")


def test_verify_empty_marker_is_refused(tmp_path):
    proc = composer("verify", "--kernel", str(tmp_path / "k"), "--initrd", str(tmp_path / "i"), "--marker", " ", check=False)
    assert (
        proc.returncode == 1
        and proc.stderr.strip() == "composer: error: --marker: must not be empty (the line the image prints once it is up)"
    )


def test_lorax_command_runs_as_every_subcommand(tmp_path, monkeypatch, capsys):
    """The `lorax` command (extras/lorax, what Pungi runs) is `composer lorax` through the
    same entry path: a refused --logfile is one line, exit 1, and the signal handlers are
    the ones every subcommand gets, restored afterwards."""
    import signal
    import tomllib

    from composer.cli import lorax

    extra = tomllib.loads((Path(__file__).resolve().parents[2] / "extras/lorax/pyproject.toml").read_text())
    assert extra["project"]["scripts"]["lorax"] == "composer.cli:lorax"
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(
        "sys.argv",
        [
            "lorax",
            "-p",
            "T",
            "-v",
            "1",
            "-r",
            "1",
            "-s",
            "file:///nonexistent",
            "--tmp",
            str(tmp_path / "tmp"),
            "--logfile",
            str(tmp_path),
            str(tmp_path / "out"),
        ],
    )
    assert lorax() == 1
    assert capsys.readouterr().err == f"composer: error: --logfile {tmp_path}: is a directory\n"
    assert signal.getsignal(signal.SIGTERM) is before
    assert not (tmp_path / "out").exists() and not (tmp_path / "tmp").exists()
