import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from composer.run import (
    OUTPUT_MARKER,
    CommandError,
    ComposerError,
    Metrics,
    atomic_dir,
    in_tree_argv,
    info,
    locked_mkdir,
    redact,
    register_secret,
    remove_stale,
    run,
    set_logging,
    stage,
    stop_logging,
)


def test_run_error_shows_command_and_stderr_tail():
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
    msg = str(e.value)
    assert "exit 3" in msg and "sh -c" in msg and "the reason" in msg


def test_run_missing_program_is_a_clear_error():
    with pytest.raises(ComposerError, match="required program not found: no-such-program-xyz"):
        run(["no-such-program-xyz", "--flag"])


def test_run_capture_and_input():
    assert run(["cat"], input=b"abc", capture=True).stdout == b"abc"


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "half-written").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_without_force(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    with pytest.raises(ComposerError, match="exists"):
        with atomic_dir(final):
            pass


def test_atomic_dir_force_keeps_old_output_until_new_is_complete(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as d:  # a previous output: --force replaces only composer's own
        (d / "old").write_text("precious")
    with pytest.raises(RuntimeError):
        with atomic_dir(final, force=True) as d:
            (d / "new").write_text("partial")
            raise RuntimeError("failed half-way")
    assert (final / "old").read_text() == "precious"
    with atomic_dir(final, force=True) as d:
        (d / "new").write_text("complete")
    assert (final / "new").read_text() == "complete"
    assert not (final / "old").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_child_dies_with_composer(tmp_path):
    """A child of run() must not outlive composer, even if composer is SIGKILLed."""
    marker = tmp_path / "pid"
    code = f"from composer.run import run\nrun(['sh', '-c', 'echo $$ > {marker}; exec sleep 60'])\n"
    parent = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(100):
        if marker.exists() and marker.read_text().strip():
            break
        time.sleep(0.05)
    child = int(marker.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the child survived composer's death")


def test_in_tree_argv_uses_private_namespace(tmp_path):
    argv = in_tree_argv(tmp_path, ["dracut", "-f"], binds=[(tmp_path / "o", "/tmp/out")])
    assert argv[0] == "bwrap" and "--die-with-parent" in argv
    assert argv[argv.index("--bind") + 1] == str(tmp_path)
    assert argv[-3:] == ["--", "dracut", "-f"]


def test_in_tree_commands_do_not_get_the_hosts_tmpdir():
    """A TMPDIR set for composer (Koji, CI) names a host path the tree does not have: dracut
    failed on it. Run for real, with the host's / as the tree."""
    argv = in_tree_argv(Path("/"), ["sh", "-c", "echo ${TMPDIR-unset} ${TMP-unset}"])
    out = run(argv, env={"TMPDIR": "/srv/no-such-tmp", "TMP": "/srv/no-such-tmp"}, capture=True).stdout
    assert out.decode().split() == ["unset", "unset"]


def test_remove_stale_spares_live_builds(tmp_path):
    live = tmp_path / "composer-build.live"
    fd = locked_mkdir(live)
    dead = tmp_path / "composer-build.dead"
    os.close(locked_mkdir(dead))  # nobody holds its lock any more: a killed build's
    (dead / "tree").mkdir()
    foreign = tmp_path / "composer-build.someone-elses"  # the same name, no composer made it
    (foreign / "data").mkdir(parents=True)
    try:
        assert remove_stale(tmp_path, "composer-build.*") == [dead]
        assert live.is_dir() and not dead.exists() and (foreign / "data").is_dir()
    finally:
        os.close(fd)
    assert remove_stale(tmp_path, "composer-build.*") == [live]


def test_atomic_dir_removes_a_killed_builds_partial(tmp_path):
    final = tmp_path / "out"
    os.close(locked_mkdir(tmp_path / ".out.partial-999999"))
    (tmp_path / ".out.partial-1-not-ours").mkdir()  # a similar name, not composer's
    with atomic_dir(final) as d:
        assert d.name.startswith(f".out.partial-{os.getpid()}-")  # unpredictable: nothing planted there
        (d / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-1-not-ours", "out"]
    assert sorted(p.name for p in final.iterdir()) == [OUTPUT_MARKER, "x"]


def test_the_loser_of_two_builds_into_one_outdir_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(ComposerError, match="exists"):
        with atomic_dir(final) as d:
            (d / "big").write_bytes(b"x" * 4096)
            final.mkdir()  # the other build finished first
            (final / OUTPUT_MARKER).write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_command_error_reason_and_sandbox_argv():
    e = CommandError(
        ["bwrap", "--bind", "/t", "/", "--", "dracut", "--add", "x"],
        1,
        "dracut: memstrack is not available\ndracut: dracut module 'x' cannot be found or installed.\n",
    )
    assert str(e).startswith("command failed (exit 1): dracut --add x: ")
    assert e.reason == "dracut: dracut module 'x' cannot be found or installed."


def test_workdir_is_removed_but_a_kept_one_survives_the_next_build(tmp_path):
    from composer.config import Config
    from composer.pipelines.runtime import KEPT_PREFIX, workdir_for

    cfg = Config(product="TestProduct", version="1", outdir=tmp_path / "out", workdir=tmp_path / "w", keep_workdir=True)
    with workdir_for(cfg) as d:
        (d / "tree").mkdir()
    (kept,) = (tmp_path / "w").iterdir()
    assert kept.name.startswith(KEPT_PREFIX) and (kept / "tree").is_dir()
    with workdir_for(Config(product="TestProduct", version="1", outdir=tmp_path / "out", workdir=tmp_path / "w")):
        pass
    assert list((tmp_path / "w").iterdir()) == [kept]


# --------------------------------------------------------------------------- the log (issue 20)


@pytest.fixture
def logging_off():
    yield
    stop_logging()


def test_logfile_never_written_through_a_link(tmp_path, logging_off):
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:0\n")
    link = tmp_path / "build.log"
    link.symlink_to(victim)
    with pytest.raises(ComposerError, match="build.log: is a symbolic link"):
        set_logging(logfile=link)
    info("after the refusal")
    assert victim.read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "proc"])
def test_logfile_that_is_no_file_is_refused_at_once(tmp_path, kind, logging_off):
    path = {"fifo": tmp_path / "fifo", "directory": tmp_path, "device": Path("/dev/full"), "proc": Path("/proc/self/comm")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    start = time.monotonic()
    with pytest.raises(ComposerError, match=f"{path}: (is a|not a regular)"):
        set_logging(logfile=path)
    assert time.monotonic() - start < 5  # a FIFO with no reader is refused, not waited on


def test_log_holds_no_url_credentials(tmp_path, logging_off):
    log = tmp_path / "build.log"
    set_logging(logfile=log)
    register_secret("proxy-pass-123")
    info("fetching https://alice:s3cret@mirror.example/os/ through http://bob:proxy-pass-123@proxy:3128")
    with pytest.raises(CommandError) as e:
        run([sys.executable, "-c", "import sys; sys.exit('cannot reach https://carol:hunter22@x.example/')"])
    text = log.read_text() + str(e.value)
    assert "s3cret" not in text and "proxy-pass-123" not in text and "hunter22" not in text, text
    assert "https://***@mirror.example/os/" in text


def test_redact_masks_userinfo_of_any_scheme():
    assert redact("a ftp://u:p@h/x b https://tok@h c file:///srv/a@b") == "a ftp://***@h/x b https://***@h c file:///srv/a@b"


def test_stage_records_into_metrics_once():
    """stage() puts its time (and with usage, CPU and peak RSS) into the one Metrics, under
    its key; a block that recorded it already (a manifest listing it) is not overwritten."""
    m = Metrics()
    with stage("media tree", m, key="media_tree"):
        pass
    with stage("install", m, usage=True):
        pass
    with stage("outputs", m) as span:
        m.record("outputs", span)
        early = m.timings["outputs"]
        time.sleep(0.02)
    assert list(m.timings) == ["media_tree", "install", "outputs"] and m.timings["outputs"] == early
    assert list(m.cpu) == ["install"] and list(m.peak_rss_mib) == ["install"]
    with pytest.raises(ComposerError, match=r"^pack: No space left on device \(/x\)$"):
        with stage("pack", m):
            raise OSError(28, "No space left on device", "/x")
    assert "pack" not in m.timings


def test_sbin_on_path_appends_what_a_users_path_lacks(monkeypatch):
    """An ssh session's PATH for an ordinary user (Debian): the stock templates' `runcmd chroot`
    needs /usr/sbin; nothing already there moves or repeats."""
    from composer.run import sbin_on_path

    monkeypatch.setenv("PATH", "/home/u/composer/bin:/usr/local/bin:/usr/bin:/bin:/usr/games")
    sbin_on_path()
    assert os.environ["PATH"] == ("/home/u/composer/bin:/usr/local/bin:/usr/bin:/bin:/usr/games:/usr/local/sbin:/usr/sbin:/sbin")
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    sbin_on_path()
    assert os.environ["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin"
