"""verify.py logic: argv, console classification, bisection, and process handling with a fake qemu."""

import functools
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from composer import verify
from composer.run import ComposerError
from composer.verify import (
    BootResult,
    classify_line,
    clean_line,
    fatal_reason,
    find_floors,
    find_min_memory,
    is_marker,
    qemu_argv,
    resolve_accel,
)
from testproduct import BOOT_MARKER, CHECK_ARGS


def test_qemu_argv_tcg() -> None:
    argv = qemu_argv(
        Path("/k/vmlinuz"), Path("/k/initrd.img"), memory_mb=384, check_args=CHECK_ARGS, append="quiet root=live:/x.img"
    )
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-m") + 1] == "384"
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-machine") + 1] == "q35"
    for flag in ("-nodefaults", "-no-reboot"):
        assert flag in argv
    assert argv[argv.index("-serial") + 1] == "stdio"
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinuz"
    assert argv[argv.index("-initrd") + 1] == "/k/initrd.img"
    cmdline = argv[argv.index("-append") + 1]
    assert cmdline.startswith("console=ttyS0 root=live:/squashfs.img rd.live.image composer.check=poweroff")
    # caller's arguments come last, so they win for the kernel and for dracut
    assert cmdline.endswith("quiet root=live:/x.img")
    # Nothing product-specific unless the caller asks for it.
    plain = qemu_argv(Path("k"), Path("i"), memory_mb=384)
    assert plain[plain.index("-append") + 1] == "console=ttyS0 root=live:/squashfs.img rd.live.image no_timer_check"


def test_qemu_argv_kvm_and_errors() -> None:
    argv = qemu_argv(Path("k"), Path("i"), memory_mb=512, accel="kvm", smp=1, cpu="qemu64")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "qemu64"
    assert qemu_argv(Path("k"), Path("i"), memory_mb=1, accel="kvm")[argv.index("-cpu") + 1] == "host"
    with pytest.raises(ValueError):
        qemu_argv(Path("k"), Path("i"), memory_mb=512, accel="auto")


def test_resolve_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    assert verify.kvm_usable(None) is False  # nothing to prove KVM on: TCG
    monkeypatch.setattr(verify, "kvm_usable", lambda kernel: False)
    assert resolve_accel("auto") == "tcg"
    monkeypatch.setattr(verify, "kvm_usable", lambda kernel: kernel is not None)
    assert resolve_accel("auto", Path("vmlinuz")) == "kvm"
    assert resolve_accel("tcg") == "tcg"
    with pytest.raises(ComposerError):
        resolve_accel("hvf")


def test_clean_line() -> None:
    raw = b"\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mBasic System\x1b[0m.\r\n"
    assert clean_line(raw) == "  OK  ] Reached target Basic System."
    assert clean_line(b"\xff\xfe bad bytes\r\n") == "\ufffd\ufffd bad bytes"


@pytest.mark.parametrize(
    "line",
    [
        "COMPOSER-BOOT-OK",
        "COMPOSER-BOOT-OK mem=384M",
        "[   55.123456] COMPOSER-BOOT-OK",
        "  COMPOSER-BOOT-OK",
    ],
)
def test_marker_lines(line: str) -> None:
    assert is_marker(line, BOOT_MARKER)
    assert classify_line(line, BOOT_MARKER) == "marker"


@pytest.mark.parametrize(
    "line",
    [
        "         Starting composer-check.service - Print COMPOSER-BOOT-OK and power off...",
        "[    0.000000] Command line: console=ttyS0 marker=COMPOSER-BOOT-OK",
        "COMPOSER-BOOT",
    ],
)
def test_not_marker(line: str) -> None:
    assert not is_marker(line, BOOT_MARKER)


def test_custom_marker() -> None:
    assert classify_line("HELLO there", marker="HELLO") == "marker"
    assert classify_line("COMPOSER-BOOT-OK", marker="HELLO") is None


@pytest.mark.parametrize(
    "line",
    [
        "[    2.345678] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
        "[    1.000000] Initramfs unpacking failed: write error",
        "[  OK  ] Started Dracut Emergency Shell.",
        "Entering emergency mode. Exit the shell to continue.",
        "dracut Warning: Could not boot.",
        "[  130.1] dracut-initqueue[300]: Warning: dracut-initqueue: timeout, still waiting for following initqueue hooks:",
        'Generating "/run/initramfs/rdsosreport.txt"',
        "[   40.0] Out of memory: Killed process 1 (systemd) total-vm:1234kB",
    ],
)
def test_fatal_lines(line: str) -> None:
    assert fatal_reason(line) == line.strip()
    assert classify_line(line, BOOT_MARKER) == "fatal"


@pytest.mark.parametrize(
    "line",
    [
        "[    3.0] dracut-initqueue[250]: Unknown device //squashfs.img",
        "[    1.0] Unpacking initramfs...",
        "Welcome to Test Product!",
        "[  OK  ] Finished systemd-udev-trigger.service - Coldplug All udev Devices.",
    ],
)
def test_harmless_lines(line: str) -> None:
    assert classify_line(line, BOOT_MARKER) is None


def _fake_boot(threshold: int, calls: list[int]):  # type: ignore[no-untyped-def]
    def boot(kernel: Path, initrd: Path, *, memory_mb: int, log: Path | None = None, **kw: object) -> BootResult:
        calls.append(memory_mb)
        ok = memory_mb >= threshold
        return BootResult(ok, 1.0, memory_mb, "COMPOSER-BOOT-OK" if ok else None, log or Path("x"), "r")

    return boot


@pytest.mark.parametrize("threshold, expect", [(384, 384), (256, 256), (300, 304), (511, 512), (1, 256)])
def test_find_min_memory(threshold: int, expect: int) -> None:
    calls: list[int] = []
    mb, results = find_min_memory(Path("k"), Path("i"), 256, 512, 16, boot=_fake_boot(threshold, calls))
    assert mb == expect
    assert calls[0] == 512
    assert len(results) == len(calls) <= 1 + 5  # 17 grid points: log2 bisection
    assert all(r.ok == (r.memory_mb >= threshold) for r in results)


def _timed_boot(calls: list[tuple[int, float]], reach: int, usable: int):  # type: ignore[no-untyped-def]
    """A boot that reaches the marker from `reach` MB, in 60 s from `usable` MB and in
    500 s below it (thrashing); a boot whose time exceeds its timeout is cut off."""

    def boot(kernel: Path, initrd: Path, *, memory_mb: int, timeout: float, log: Path | None = None) -> BootResult:
        calls.append((memory_mb, timeout))
        took = 60.0 if memory_mb >= usable else 500.0
        if memory_mb < reach:
            return BootResult(False, 5.0, memory_mb, None, log or Path("x"), "Kernel panic - not syncing: Out of memory")
        if took > timeout:
            return BootResult(False, timeout, memory_mb, None, log or Path("x"), f"{verify.TIMEOUT_REASON} {timeout:.0f}s")
        return BootResult(True, took, memory_mb, "COMPOSER-BOOT-OK", log or Path("x"), "marker seen")

    return boot


@pytest.mark.parametrize("reach, usable", [(160, 224), (224, 224), (128, 768), (129, 130)])
def test_find_floors(reach: int, usable: int) -> None:
    """The usable floor is bisected with boots cut off at 1.5x the reference time; the
    reached floor below it boots those again with the full timeout."""
    calls: list[tuple[int, float]] = []
    f = find_floors(Path("k"), Path("i"), 128, 768, 16, timeout=900, boot=_timed_boot(calls, reach, usable))
    if usable > 512:  # even the reference thrashes: it is the reference, so usable by definition
        assert (f.usable_mb, f.reached_mb) == (128, 128)
        return
    grid_up = lambda mb: 128 + -(-(mb - 128) // 16) * 16  # noqa: E731
    assert f.reference_mb == 512 and f.reference_s == 60.0 and calls[0] == (512, 900)
    assert (f.usable_mb, f.reached_mb) == (grid_up(usable), grid_up(reach))
    assert all(t == 90.0 for mb, t in calls[1:] if mb >= f.usable_mb)  # cut off at 1.5x 60 s
    assert len(calls) <= 1 + 2 * 5 + 5  # two bisections; a cut-off boot tried twice, then once with the full timeout
    assert all(calls.count(c) == 1 or (c[1] == 90.0 and calls.count(c) == 2) for c in calls)  # only cut-offs twice


@pytest.mark.parametrize("guess", [224, 230, 208, 160, 400, 600, 100])
def test_find_floors_from_a_guess(guess: int) -> None:
    """A predicted budget seeds the usable floor's search: the same floors, fewer boots the
    nearer the guess (bench and verify pass composer's budget)."""
    calls: list[tuple[int, float]] = []
    f = find_floors(Path("k"), Path("i"), 128, 512, 16, timeout=900, boot=_timed_boot(calls, 160, 224), guess_mb=guess)
    assert (f.usable_mb, f.reached_mb) == (224, 160)
    usable_boots = [c for c in calls[1:] if c[1] == 90.0]
    if guess == 224:  # right: the floor and the step below it
        assert sorted({mb for mb, _ in usable_boots}) == [208, 224]
    blind: list[tuple[int, float]] = []
    find_floors(Path("k"), Path("i"), 128, 512, 16, timeout=900, boot=_timed_boot(blind, 160, 224))
    if abs(guess - 224) <= 16:
        assert len(calls) < len(blind)


def test_least_near_agrees_with_bisection() -> None:
    from composer.verify import _least, _least_near

    grid = list(range(128, 513, 16))
    for floor in grid:
        for start in range(len(grid)):
            probes: list[int] = []
            assert _least_near(grid, functools.partial(_passes_from, floor, probes), start) == floor
            assert _least(grid, functools.partial(_passes_from, floor, [])) == floor
            assert len(probes) <= 2 * 5 + 1  # galloping, then bisecting: each at most ~log2(25)
            if abs(grid.index(floor) - start) <= 1:
                assert len(probes) <= 3  # the guess, the floor, the step past it


def _passes_from(floor: int, probes: list[int], mb: int) -> bool:
    probes.append(mb)
    return mb >= floor


def test_find_floors_retries_a_stalled_boot() -> None:
    """One boot cut off by a stall (TCG) does not move the usable floor: the second try decides."""
    calls: list[tuple[int, float]] = []
    steady = _timed_boot(calls, 160, 224)
    stalled: set[int] = set()

    def boot(kernel: Path, initrd: Path, *, memory_mb: int, timeout: float, log: Path | None = None) -> BootResult:
        if memory_mb == 304 and memory_mb not in stalled:  # the first boot at 304 MB stalls
            stalled.add(memory_mb)
            calls.append((memory_mb, timeout))
            return BootResult(False, timeout, memory_mb, None, Path("x"), f"{verify.TIMEOUT_REASON} {timeout:.0f}s")
        return steady(kernel, initrd, memory_mb=memory_mb, timeout=timeout, log=log)

    f = find_floors(Path("k"), Path("i"), 128, 512, 16, timeout=900, boot=boot)
    assert (f.usable_mb, f.reached_mb) == (224, 160)
    assert calls.count((304, 90.0)) == 2


def test_find_floors_reference_fails() -> None:
    calls: list[tuple[int, float]] = []
    f = find_floors(Path("k"), Path("i"), 128, 256, 16, timeout=900, boot=_timed_boot(calls, 1000, 1000))
    assert (f.usable_mb, f.reached_mb, f.reference_mb) == (None, None, 256) and len(calls) == 1


def test_find_min_memory_none_and_logs(tmp_path: Path) -> None:
    calls: list[int] = []
    mb, results = find_min_memory(Path("k"), Path("i"), 256, 500, 100, boot=_fake_boot(10_000, calls), log_dir=tmp_path)
    assert mb is None and calls == [500]
    assert results[0].log == tmp_path / "boot-500M.log"
    with pytest.raises(ValueError):
        find_min_memory(Path("k"), Path("i"), 512, 256)


# --- process handling, with a fake qemu that just prints a script -----------------


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    script = tmp_path / "fake-qemu"
    pidfile = tmp_path / "qemu.pid"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""\
        import os, sys, time
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        def say(s):
            sys.stdout.write(s + "\\r\\n"); sys.stdout.flush()
        """)
        + textwrap.dedent(body)
    )
    script.chmod(0o755)
    monkeypatch.setattr(verify, "QEMU", str(script))
    for name in ("k", "i"):
        (tmp_path / name).write_bytes(b"x")
    return pidfile


def _gone(pidfile: Path) -> bool:
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _boot(tmp_path: Path, **kw: object) -> BootResult:
    return verify.boot_kernel(
        tmp_path / "k", tmp_path / "i", memory_mb=256, accel="tcg", marker=BOOT_MARKER, log=tmp_path / "serial.log", **kw
    )  # type: ignore[arg-type]


def test_boot_marker_then_poweroff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        say("[    0.000000] Linux version 6.1")
        say("\\x1b[0;32mCOMPOSER-BOOT-OK\\x1b[0m mem=256")
        time.sleep(0.2)
        sys.exit(0)
        """,
    )
    r = _boot(tmp_path)
    assert r.ok and r.marker_line == "COMPOSER-BOOT-OK mem=256" and r.memory_mb == 256
    assert b"Linux version" in r.log.read_bytes()
    assert _gone(pidfile)


def test_boot_marker_but_no_poweroff_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "POWEROFF_GRACE", 0.5)
    pidfile = _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        say("COMPOSER-BOOT-OK")
        time.sleep(600)
        """,
    )
    r = _boot(tmp_path)
    assert r.ok
    assert _gone(pidfile)


def test_boot_panic_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        say("[    1.0] Initramfs unpacking failed: write error")
        time.sleep(600)
        """,
    )
    start = time.monotonic()
    r = _boot(tmp_path, timeout=60)
    assert not r.ok and "Initramfs unpacking failed" in r.reason
    assert time.monotonic() - start < 15
    assert _gone(pidfile)


def test_boot_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        say("booting slowly")
        time.sleep(600)
        """,
    )
    r = _boot(tmp_path, timeout=1.0)
    assert not r.ok and "timeout" in r.reason
    assert _gone(pidfile)


def test_boot_qemu_exits_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        sys.stderr.write("qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\\n")
        sys.exit(1)
        """,
    )
    r = _boot(tmp_path)
    assert not r.ok
    assert "code 1" in r.reason and "cannot set up guest memory" in r.reason


def test_boot_keyboard_interrupt_kills_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        say("booting")
        time.sleep(600)
        """,
    )
    real = verify.classify_line

    def interrupt(line: str, marker: str) -> str | None:
        if line == "booting":
            raise KeyboardInterrupt
        return real(line, marker)

    monkeypatch.setattr(verify, "classify_line", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _boot(tmp_path)
    assert _gone(pidfile)


def test_boot_missing_kernel(tmp_path: Path) -> None:
    with pytest.raises(ComposerError, match="kernel"):
        verify.boot_kernel(tmp_path / "nope", tmp_path / "nope2", memory_mb=256, accel="tcg", marker=BOOT_MARKER)


def test_boot_retries_an_emulation_flake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The IO-APIC timer panic of a starved TCG guest is retried; the second boot counts."""
    count = tmp_path / "count"
    _fake_qemu(
        tmp_path,
        monkeypatch,
        f"""\
        n = int(open({str(count)!r}).read()) + 1 if os.path.exists({str(count)!r}) else 1
        open({str(count)!r}, "w").write(str(n))
        if n == 1:
            say("[    0.024000] Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug")
            time.sleep(600)
        say("COMPOSER-BOOT-OK")
        sys.exit(0)
        """,
    )
    r = _boot(tmp_path)
    assert r.ok and count.read_text() == "2"


def test_boot_gives_up_after_repeated_flakes_and_never_retries_real_panics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = tmp_path / "count"
    _fake_qemu(
        tmp_path,
        monkeypatch,
        f"""\
        n = int(open({str(count)!r}).read()) + 1 if os.path.exists({str(count)!r}) else 1
        open({str(count)!r}, "w").write(str(n))
        say("Kernel panic - not syncing: IO-APIC + timer doesn't work!" if "flake" in sys.argv[-1] else
            "Kernel panic - not syncing: VFS: Unable to mount root fs")
        time.sleep(600)
        """,
    )
    monkeypatch.setattr(verify, "BASE_APPEND", "flake")
    r = _boot(tmp_path)
    assert not r.ok and "IO-APIC" in r.reason and count.read_text() == str(verify.EMULATION_RETRIES + 1)
    count.unlink()
    monkeypatch.setattr(verify, "BASE_APPEND", "real")
    r = _boot(tmp_path)
    assert not r.ok and "VFS" in r.reason and count.read_text() == "1"


def test_qemu_dies_with_a_killed_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL of the process running the boot (no finally runs) still takes qemu down."""
    import signal
    import subprocess

    pidfile = _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        say("booting")
        time.sleep(600)
        """,
    )
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; import composer.verify as v; "
                f"v.QEMU = {str(tmp_path / 'fake-qemu')!r}; "
                f"v.boot_kernel(Path({str(tmp_path / 'k')!r}), Path({str(tmp_path / 'i')!r}), memory_mb=256, accel='tcg', "
                "timeout=600, marker='X')"
            ),
        ]
    )
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.1)
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    assert _gone(pidfile)


def test_press_enter_reaches_the_monitor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--press-enter: a monitor socket on qemu's command line, and Enter sent through it until
    the boot ends (the fake qemu boots only once it has read the key)."""
    monkeypatch.setattr(verify, "ENTER_EVERY", 0.05)
    _fake_qemu(
        tmp_path,
        monkeypatch,
        """\
        import socket
        spec = sys.argv[sys.argv.index("-monitor") + 1]
        assert spec.startswith("unix:") and spec.endswith(",server=on,wait=off"), spec
        server = socket.socket(socket.AF_UNIX)
        server.bind(spec[len("unix:"):-len(",server=on,wait=off")])
        server.listen(1)
        conn, _ = server.accept()
        got = b""
        while b"sendkey ret\\n" not in got:
            got += conn.recv(64)
        say("COMPOSER-BOOT-OK after Enter")
        """,
    )
    argv = [verify.QEMU, "-m", "256"]
    r = verify.boot_argv(argv, memory_mb=256, timeout=10, marker=BOOT_MARKER, log=tmp_path / "serial.log", enter=True)
    assert r.ok and r.marker_line == "COMPOSER-BOOT-OK after Enter", r.reason
    # without it, no monitor: the menu's own timeout boots the default entry
    _fake_qemu(tmp_path, monkeypatch, 'assert "-monitor" not in sys.argv\nsay("COMPOSER-BOOT-OK")\n')
    assert verify.boot_argv([verify.QEMU], memory_mb=256, timeout=30, marker=BOOT_MARKER, log=tmp_path / "serial.log").ok
