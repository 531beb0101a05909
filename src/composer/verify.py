"""Boot checks under qemu: boot a kernel + initrd, watch the serial console for a marker.

The image under test prints a marker line on the console once it is up; the caller
names the marker, and the kernel arguments that ask the image for it (`composer verify
--marker/--check-args`; the defaults there are composer's test product's). We read the
serial console through a pipe as it comes, so we can stop at the marker, fail fast on a panic or a dracut emergency
shell, and never wait for dmsquash-live's 3000 s device timeout.

/dev/kvm may exist and still be useless (nested virtualisation here aborts with
-cpu host and crawls with the default CPU), so "auto" only picks KVM after a probe
proves a guest makes progress; otherwise TCG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from composer.outputs import ram
from composer.outputs.nbd import NbdServer, nbd_server_conf
from composer.run import ComposerError, _die_with_parent, debug, info

QEMU = "qemu-system-x86_64"
# root= is always passed: without it the kernel unpacks an oversized initrd into a
# tmpfs capped at half the RAM and fails. Later arguments win (kernel and dracut),
# so `append` can override any of these. The caller's check arguments follow.
BASE_APPEND = "console=ttyS0 root=live:/squashfs.img rd.live.image"
# no_timer_check: under TCG on a busy host the kernel's IO-APIC timer probe can miss its
# ticks and panic ("IO-APIC + timer doesn't work!"); the emulated timer is fine.
EMULATION_APPEND = "no_timer_check"
TIMEOUT_REASON = "timeout after"
# A floor is usable when the boot there takes at most this many times its time at REFERENCE_MB.
USABLE_SLOWDOWN = 1.5
REFERENCE_MB = 512
POWEROFF_GRACE = 20.0  # seconds qemu gets to power off by itself after the marker
# --press-enter: menus that wait for their timeout (lorax's stock grub.cfg: 60 s) answered as
# someone at the console would, Enter (the highlighted, i.e. default, entry boots). Pressed
# every ENTER_EVERY s for ENTER_FOR s: the firmware and grub drop or buffer the early ones,
# and the kernel's console reads the late ones with nothing waiting on them.
ENTER_EVERY, ENTER_FOR = 2.0, 60.0
# Failures of the emulation, not of the image (menu-driven boots cannot add no_timer_check):
# such a boot is tried again, up to this many times.
EMULATION_FLAKES = ("IO-APIC + timer doesn't work",)
EMULATION_RETRIES = 2

# Lines after which a boot cannot reach the marker any more.
FATAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"Kernel panic",
        r"Initramfs unpacking failed",
        r"Entering emergency mode",
        r"Dracut Emergency Shell",
        r"dracut Warning: Could not boot",
        r"dracut-initqueue.*timeout, still waiting",
        r"Generating \S*rdsosreport\.txt",
        r"Out of memory: Kill",
        r"composer: not enough memory",  # our initramfs's RAM check (share/dracut/modules.d/90composer)
    )
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]")
_PRINTK_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")


@dataclasses.dataclass
class BootResult:
    ok: bool
    seconds: float
    memory_mb: int
    marker_line: str | None
    log: Path
    reason: str

    @property
    def timed_out(self) -> bool:
        return not self.ok and self.reason.startswith(TIMEOUT_REASON)


def clean_line(raw: bytes | str) -> str:
    """Serial output -> plain text: no colours, CR, or trailing whitespace."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return _ANSI.sub("", text).replace("\r", "").rstrip()


def is_marker(line: str, marker: str) -> bool:
    """The marker counts only at the start of a line (after a printk timestamp), so a
    systemd status line such as "Starting ... MARKER ..." does not."""
    return _PRINTK_TIME.sub("", line.strip()).startswith(marker)


def fatal_reason(line: str) -> str | None:
    for pattern in FATAL_PATTERNS:
        if pattern.search(line):
            return line.strip()
    return None


def classify_line(line: str, marker: str) -> str | None:
    """'marker', 'fatal' or None for one cleaned console line."""
    if is_marker(line, marker):
        return "marker"
    if fatal_reason(line):
        return "fatal"
    return None


def qemu_argv(
    kernel: Path,
    initrd: Path | None,
    *,
    memory_mb: int,
    check_args: str = "",
    append: str = "",
    accel: str = "tcg",
    smp: int = 2,
    cpu: str | None = None,
    extra_qemu_args: Sequence[str] = (),
    base_append: str | None = None,
) -> list[str]:
    """The qemu command for one boot check; accel is a resolved "kvm" or "tcg".

    check_args: kernel arguments that make the image print its marker (and power off);
    append: the caller's, last. extra_qemu_args go last (e.g. a -drive for a test disk).
    No initrd and another base_append: the bare kernel of the KVM probe."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be resolved to kvm or tcg, not {accel!r}")
    cpu = cpu or ("host" if accel == "kvm" else "max")  # max: every feature TCG emulates
    base = BASE_APPEND if base_append is None else base_append
    cmdline = " ".join(a for a in (base, check_args, EMULATION_APPEND, append) if a)
    return [
        QEMU,
        "-machine",
        "q35",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        str(memory_mb),
        "-smp",
        str(smp),
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-nic",
        "none",
        "-no-reboot",  # a reboot (panic, or the guest giving up) ends qemu instead of looping
        "-serial",
        "stdio",
        "-kernel",
        os.fspath(kernel),
        *(["-initrd", os.fspath(initrd)] if initrd is not None else []),
        "-append",
        cmdline,
        *extra_qemu_args,
    ]


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """End qemu (leader of its own process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@functools.cache
def kvm_usable(kernel: Path | None, cpu: str = "host", timeout: float = 3.0) -> bool:
    """Does a KVM guest make real progress here? Cached for the process.

    Boots `kernel` (the one under test) with no initrd and waits for its first message.
    Firmware alone proves nothing: on a host whose nested KVM is broken SeaBIOS runs fine
    and the kernel then hangs for good once it leaves real mode (seen here: "Probing EDD"
    and then nothing, with -cpu host, max or qemu64), or qemu aborts at once ("failed to
    set MSR 0x10a"). TCG prints "Linux version" after 3.3 s; a KVM slower than
    `timeout` is not worth using. No kernel: TCG, the path known to work.
    """
    if kernel is None or not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        return False
    argv = qemu_argv(
        kernel, None, memory_mb=256, accel="kvm", cpu=cpu, smp=1, base_append="console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"
    )
    ok = False
    lines = _Lines()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        lines.start(proc)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = lines.get(left)
            if line is None:  # qemu exited: e.g. "failed to set MSR"
                break
            if isinstance(line, str) and "Linux version" in line:
                ok = True
                break
    finally:
        _kill_group(proc)
        lines.join()
    debug(f"kvm probe (-cpu {cpu}, {kernel}): {'usable' if ok else 'not usable'}: {' | '.join(lines.tail[-2:])}")
    return ok


def resolve_accel(accel: str, kernel: Path | None = None) -> str:
    """kvm or tcg; "auto" is kvm only when `kernel` makes progress under it (kvm_usable)."""
    if accel == "auto":
        return "kvm" if kvm_usable(kernel) else "tcg"
    if accel in ("kvm", "tcg"):
        return accel
    raise ComposerError(f"--accel must be auto, kvm or tcg, not {accel!r}")


def media_kernel(tmp: Path, *, iso: Path | None = None, tftp_dir: Path | None = None, **_: Any) -> Path | None:
    """The kernel a medium boots (images/pxeboot/vmlinuz, where lorax and composer put it),
    for the KVM probe; None if it has none there."""
    if tftp_dir is not None:
        k = tftp_dir / "images" / "pxeboot" / "vmlinuz"
        return k if k.is_file() else None
    if iso is None:
        return None
    dest = tmp / "vmlinuz"
    proc = subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", os.fspath(iso), "-extract", "/images/pxeboot/vmlinuz", os.fspath(dest)],
        capture_output=True,
        check=False,
    )
    return dest if proc.returncode == 0 and dest.is_file() else None


_TIMEOUT = object()


class _Lines:
    """A thread that reads qemu's output line by line into a queue (and a log file)."""

    def __init__(self, log: Any = None) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.log = log
        self.tail: list[str] = []
        self.thread: threading.Thread | None = None

    def start(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            try:
                for raw in iter(stream.readline, b""):
                    if self.log is not None:
                        self.log.write(raw)
                        self.log.flush()
                    line = clean_line(raw)
                    if line:
                        self.tail = (self.tail + [line])[-20:]
                    self.queue.put(line)
            finally:
                self.queue.put(None)

        self.thread = threading.Thread(target=pump, name="qemu-serial", daemon=True)
        self.thread.start()

    def get(self, timeout: float) -> Any:
        """The next line; None when qemu closed its output; _TIMEOUT if nothing came."""
        try:
            return self.queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return _TIMEOUT

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=10)


def boot_kernel(
    kernel: Path,
    initrd: Path,
    *,
    memory_mb: int,
    marker: str,
    check_args: str = "",
    append: str = "",
    timeout: float = 600,
    accel: str = "auto",
    log: Path | None = None,
    smp: int = 2,
    extra_qemu_args: Sequence[str] = (),
) -> BootResult:
    """Boot under qemu until the marker, a fatal console line, qemu's exit or the timeout.

    qemu runs in its own process group and is killed on every way out (including
    KeyboardInterrupt). The full serial log is kept in `log` (a temp file if None).
    extra_qemu_args are appended to qemu's command line (e.g. a -drive).
    Runs through boot_argv, like the media boots. marker and check_args: see qemu_argv.
    """
    for what, p in (("kernel", kernel), ("initrd", initrd)):
        if not p.is_file():
            raise ComposerError(f"boot check: {what} {p} does not exist")
    argv = qemu_argv(
        kernel,
        initrd,
        memory_mb=memory_mb,
        check_args=check_args,
        append=append,
        accel=resolve_accel(accel, kernel),
        smp=smp,
        extra_qemu_args=extra_qemu_args,
    )
    return boot_argv(argv, memory_mb=memory_mb, timeout=timeout, marker=marker, log=log)


def _grid(lo_mb: int, hi_mb: int, step_mb: int, *also: int) -> list[int]:
    if lo_mb <= 0 or hi_mb < lo_mb or step_mb <= 0:
        raise ValueError(f"bad memory range {lo_mb}..{hi_mb} step {step_mb}")
    return sorted({*range(lo_mb, hi_mb + 1, step_mb), hi_mb, *also})


def _least(grid: list[int], passes: Callable[[int], bool]) -> int:
    """The least grid value that passes, grid[-1] known to pass; more RAM never hurts."""
    good, bad = len(grid) - 1, -1  # grid[good] passes; grid[bad] fails (-1: below the grid)
    while good - bad > 1:
        mid = (good + bad) // 2
        if passes(grid[mid]):
            good = mid
        else:
            bad = mid
    return grid[good]


def _least_near(grid: list[int], passes: Callable[[int], bool], start: int) -> int:
    """_least, searched outward from grid[start] (a predicted floor): steps of 1, 1, 2, 4...
    grid points towards the answer, then bisection between the last pass and the last fail.
    Near a good guess: two or three boots instead of log2(len(grid)) (each a TCG boot of minutes)."""
    good, bad, steps = len(grid) - 1, -1, _steps()
    if passes(grid[start]):
        good = start
        while (i := max(good - next(steps), 0)) < good:
            if not passes(grid[i]):
                bad = i
                break
            good = i
    else:
        bad = start
        while (i := min(bad + next(steps), good)) < good:
            if passes(grid[i]):
                good = i
                break
            bad = i
    return _least(grid[bad + 1 : good + 1], passes) if good - bad > 1 else grid[good]


def _steps() -> Iterator[int]:
    """1, 1, 2, 4, 8...: the grid point next to a guess and the one after it first."""
    yield 1
    step = 1
    while True:
        yield step
        step *= 2


def find_min_memory(
    kernel: Path | None,  # None: `boot` finds its own (an ISO)
    initrd: Path | None,
    lo_mb: int,
    hi_mb: int,
    step_mb: int = 16,
    *,
    log_dir: Path | None = None,
    boot: Callable[..., BootResult] = boot_kernel,
    **boot_kwargs: Any,
) -> tuple[int | None, list[BootResult]]:
    """Smallest memory (on the grid lo, lo+step, ..., hi) that reaches the marker at all.

    Bisects: hi is tried first (None if even hi fails), then about log2((hi-lo)/step)
    boots. Returns the value and every result.
    """
    grid = _grid(lo_mb, hi_mb, step_mb)
    results: list[BootResult] = []

    def attempt(mb: int) -> bool:
        log = log_dir / f"boot-{mb}M.log" if log_dir is not None else None
        results.append(boot(kernel, initrd, memory_mb=mb, log=log, **boot_kwargs))
        return results[-1].ok

    if not attempt(grid[-1]):
        return None, results
    return _least(grid, attempt), results


@dataclasses.dataclass
class Floors:
    """Two floors: `usable`, the least RAM whose boot reaches the marker within `slowdown`
    times the boot at `reference_mb` (below it the page cache thrashes: boot.iso took
    562 s at its bare floor against 70 s at 512 MB); `reached`, the least that reaches it at all."""

    usable_mb: int | None
    reached_mb: int | None
    reference_mb: int
    reference_s: float
    slowdown: float
    results: list[BootResult]


def find_floors(
    kernel: Path | None,
    initrd: Path | None,
    lo_mb: int,
    hi_mb: int,
    step_mb: int = 16,
    *,
    reference_mb: int = REFERENCE_MB,
    slowdown: float = USABLE_SLOWDOWN,
    timeout: float = 900,
    log_dir: Path | None = None,
    boot: Callable[..., BootResult] = boot_kernel,
    guess_mb: int | None = None,
    **boot_kwargs: Any,
) -> Floors:
    """Bisect the usable floor (boots cut off at the usable time, each cut-off one tried twice),
    then the reached floor below it (those cut off are booted again with the full timeout). The reference is
    reference_mb when the range holds it, else the range's top. guess_mb (composer's predicted
    budget): the usable floor is searched outward from it (_least_near), not across the range."""
    ref = reference_mb if lo_mb <= reference_mb <= hi_mb else hi_mb
    grid = _grid(lo_mb, hi_mb, step_mb, ref)
    results: list[BootResult] = []
    known: dict[int, BootResult] = {}

    def attempt(mb: int, limit: float, *, again: bool = False) -> BootResult:
        r = known.get(mb)
        if r is None or (r.timed_out and limit > r.seconds) or again:
            name = f"boot-{mb}M{'-again' if again else ''}.log"
            r = known[mb] = boot(
                kernel, initrd, memory_mb=mb, log=log_dir / name if log_dir else None, timeout=limit, **boot_kwargs
            )
            results.append(r)
        return r

    def usable_at(mb: int) -> bool:
        r = attempt(mb, usable_s)
        if r.timed_out:
            # Under TCG one boot can stall for 20 s (an RCU stall while clearing pages) that the
            # next does not: a boot cut off at the usable time decides only on a second try.
            r = attempt(mb, usable_s, again=True)
        return r.ok and r.seconds <= usable_s

    first = attempt(ref, timeout)
    if not first.ok:
        return Floors(None, None, ref, first.seconds, slowdown, results)
    usable_s = slowdown * first.seconds
    below = grid[: grid.index(ref) + 1]
    if guess_mb is None:
        usable = _least(below, usable_at)
    else:  # the first grid point at or above the guess (the reference if the guess is above it)
        usable = _least_near(below, usable_at, next((i for i, mb in enumerate(below) if mb >= guess_mb), len(below) - 1))
    reached = _least(below[: below.index(usable) + 1], lambda mb: attempt(mb, timeout).ok)
    return Floors(usable, reached, ref, first.seconds, slowdown, results)


def predicted_floor(kernel: Path | None, initrd: Path | None, iso: Path | None = None) -> tuple[int, str] | None:
    """composer's predicted RAM floor for what --min-memory boots, and where it comes
    from: the budget an initrd carries (boot.iso, split netboot), else a prediction
    from the files (outputs/ram.py). None if there is nothing to predict from."""
    with tempfile.TemporaryDirectory(prefix="composer-predict-") as tmp:
        if iso is not None:
            kernel, initrd = Path(tmp) / "vmlinuz", Path(tmp) / "initrd.img"
            for src, dest in (("/images/pxeboot/vmlinuz", kernel), ("/images/pxeboot/initrd.img", initrd)):
                proc = subprocess.run(
                    ["xorriso", "-osirrox", "on", "-indev", os.fspath(iso), "-extract", src, os.fspath(dest)],
                    capture_output=True,
                    check=False,
                )
                if proc.returncode != 0 or not dest.is_file():
                    return None
        if kernel is None or initrd is None:
            return None
        try:
            carried = ram.carried_budget(initrd)
            if carried is not None:
                return carried, "the budget the initrd carries"
            kind = "big-initrd" if ram.carries_squashfs(initrd) else "media"
            return ram.predict(kind, kernel, initrd).floor_mb, f"predicted for a {kind}"
        except (OSError, ValueError) as e:
            debug(f"no RAM prediction: {e}")
            return None


def min_memory_line(floors: Floors, step: int, predicted: tuple[int, str] | None) -> str:
    """`verify --min-memory`'s answer: the two bisected floors beside composer's prediction."""
    line = (
        f"min-memory: {floors.usable_mb} MB usable, {floors.reached_mb} MB reached (step {step} MB; usable: the marker"
        f" within {floors.slowdown:g}x the {floors.reference_s:.0f} s at {floors.reference_mb} MB)"
    )
    if predicted is not None and floors.usable_mb:
        value, source = predicted
        off = 100 * (value - floors.usable_mb) / floors.usable_mb
        line += f"; composer's budget {value} MB ({source}), {off:+.0f}% of usable"
    return line


# --------------------------------------------------------------------------- media
# Boot checks for boot.iso (as a CD, under SeaBIOS or OVMF) and for netboot trees
# (qemu's built-in DHCP + TFTP, the firmware's iPXE ROM). The boot loader's menu
# decides the kernel command line, so the default entry must carry console=ttyS0
# and what makes the image print its marker (the test product's templates do).

OVMF_CODE_CANDIDATES = (
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/edk2/ovmf/OVMF_CODE.fd",
    "/usr/share/qemu/OVMF_CODE.fd",
)


def find_ovmf() -> tuple[Path, Path]:
    """(OVMF code, the matching pristine variable store) of this host."""
    for code in map(Path, OVMF_CODE_CANDIDATES):
        vars_ = code.with_name(code.name.replace("CODE", "VARS"))
        if code.is_file() and vars_.is_file():
            return code, vars_
    raise ComposerError("UEFI boot check: no OVMF firmware found (install ovmf)")


def qemu_media_argv(
    *,
    memory_mb: int,
    accel: str = "tcg",
    smp: int = 2,
    cpu: str | None = None,
    firmware: str = "bios",
    ovmf_vars: Path | None = None,
    iso: Path | None = None,
    tftp_dir: Path | None = None,
    bootfile: str | None = None,
    disk: Path | None = None,
) -> list[str]:
    """qemu for a firmware boot: a CD (iso), the network (tftp_dir + bootfile) or a raw
    disk image (virtio; snapshot=on: the guest's writes never reach the file)."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be resolved to kvm or tcg, not {accel!r}")
    if firmware not in ("bios", "uefi"):
        raise ComposerError(f"firmware must be bios or uefi, not {firmware!r}")
    cpu = cpu or ("host" if accel == "kvm" else "max")
    argv = [
        QEMU,
        "-machine",
        "q35",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        str(memory_mb),
        "-smp",
        str(smp),
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    if firmware == "uefi":
        code, _ = find_ovmf()
        if ovmf_vars is None:
            raise ValueError("a UEFI boot needs a private copy of the OVMF variable store")
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={ovmf_vars}",
        ]
    if iso is not None:
        argv += [
            "-drive",
            f"file={iso},media=cdrom,readonly=on,if=none,id=cd0",
            "-device",
            "ide-cd,drive=cd0,bootindex=1",
            "-nic",
            "none",
        ]
    elif disk is not None:
        argv += [
            "-drive",
            f"file={disk},format=raw,if=none,id=hd0,snapshot=on",
            "-device",
            "virtio-blk-pci,drive=hd0,bootindex=1",
            "-nic",
            "none",
        ]
    elif tftp_dir is not None:
        if not bootfile:
            raise ValueError("a network boot needs a boot file")
        argv += ["-netdev", f"user,id=n0,tftp={tftp_dir},bootfile={bootfile}", "-device", "virtio-net-pci,netdev=n0,bootindex=1"]
    else:
        raise ValueError("nothing to boot: give iso, disk or tftp_dir")
    return argv


def boot_argv(
    argv: list[str],
    *,
    memory_mb: int,
    timeout: float = 900,
    marker: str,
    log: Path | None = None,
    what: str = "boot check",
    enter: bool = False,
) -> BootResult:
    """Run a prepared qemu argv until the marker, a fatal line, qemu's exit or the timeout
    (with `enter`, pressing Enter at the boot menu through qemu's monitor).

    qemu runs in its own process group and is killed on every way out (including
    KeyboardInterrupt); the serial log is kept in `log` (a temp file if None).
    A boot that fails on a known emulation flake (EMULATION_FLAKES) is run again."""
    for attempt in range(EMULATION_RETRIES + 1):
        result = _boot_once(argv, memory_mb=memory_mb, timeout=timeout, marker=marker, log=log, what=what, enter=enter)
        if result.ok or not any(f in result.reason for f in EMULATION_FLAKES) or attempt == EMULATION_RETRIES:
            return result
        info(f"{what}: emulation flake ({result.reason}); booting again")
    raise AssertionError("unreachable")


def _boot_once(
    argv: list[str],
    *,
    memory_mb: int,
    timeout: float,
    marker: str,
    log: Path | None,
    what: str,
    enter: bool = False,
) -> BootResult:
    if shutil.which(argv[0]) is None:
        raise ComposerError(f"{what}: {argv[0]} not found")
    if log is None:
        fd, name = tempfile.mkstemp(prefix=f"composer-boot-{memory_mb}M-", suffix=".log")
        os.close(fd)
        log = Path(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    info(f"{what}: {memory_mb} MB, {argv[argv.index('-accel') + 1] if '-accel' in argv else '?'}, log {log}")
    debug("$ " + " ".join(argv))
    start = time.monotonic()
    ok, marker_line, reason, seconds = False, None, "", 0.0
    with log.open("wb") as logf, _pressing_enter(enter) as monitor:
        lines = _Lines(logf)
        proc = subprocess.Popen(
            argv + monitor,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            lines.start(proc)
            deadline = start + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = f"{TIMEOUT_REASON} {timeout:.0f}s without the marker"
                    break
                line = lines.get(left)
                if line is _TIMEOUT:
                    continue
                if line is None:
                    rc = proc.wait()
                    last = lines.tail[-1] if lines.tail else "no console output"
                    reason = f"qemu exited (code {rc}) before the marker; last line: {last}"
                    break
                kind = classify_line(line, marker)
                if kind == "marker":
                    ok, marker_line, reason = True, line.strip(), "marker seen"
                    break
                if kind == "fatal":
                    reason = line.strip()
                    break
            seconds = time.monotonic() - start
            if ok:
                try:  # let the guest power off by itself; it is killed below if not
                    proc.wait(timeout=POWEROFF_GRACE)
                except subprocess.TimeoutExpired:
                    debug(f"{what}: qemu did not power off after the marker; killing it")
        finally:
            _kill_group(proc)
            lines.join()
    result = BootResult(ok, round(seconds, 1), memory_mb, marker_line, log, reason)
    info(f"{what}: {memory_mb} MB: {'OK' if ok else 'FAILED'} in {result.seconds:.0f}s: {reason}")
    return result


@contextlib.contextmanager
def _pressing_enter(enter: bool) -> Iterator[list[str]]:
    """With `enter`: qemu arguments for a monitor socket, and a thread pressing Enter through
    it (ENTER_EVERY, ENTER_FOR) while the block runs. Without: no arguments, nothing runs."""
    if not enter:
        yield []
        return
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="composer-monitor-") as tmp:
        sock = os.path.join(tmp, "monitor.sock")

        def press() -> None:
            conn = None
            end = time.monotonic() + ENTER_FOR
            while not stop.wait(ENTER_EVERY) and time.monotonic() < end:
                try:
                    if conn is None:
                        conn = socket.socket(socket.AF_UNIX)
                        conn.connect(sock)
                    conn.sendall(b"sendkey ret\n")
                except OSError:  # qemu not listening yet, or gone
                    if conn is not None:
                        conn.close()
                    conn = None
            if conn is not None:
                conn.close()

        thread = threading.Thread(target=press, name="composer-enter", daemon=True)
        thread.start()
        try:
            yield ["-monitor", f"unix:{sock},server=on,wait=off"]
        finally:
            stop.set()
            thread.join(timeout=10)


def boot_iso(
    iso: Path,
    *,
    firmware: str = "bios",
    memory_mb: int = 512,
    timeout: float = 900,
    marker: str,
    accel: str = "auto",
    log: Path | None = None,
    smp: int = 2,
    enter: bool = False,
) -> BootResult:
    """Boot iso as a CD under SeaBIOS (firmware="bios") or OVMF ("uefi"); the menu's
    default entry must boot to the marker, unattended or (enter) at once."""
    if not iso.is_file():
        raise ComposerError(f"boot check: ISO {iso} does not exist")
    return _boot_media(
        "CD",
        firmware=firmware,
        memory_mb=memory_mb,
        timeout=timeout,
        marker=marker,
        accel=accel,
        log=log,
        smp=smp,
        enter=enter,
        iso=iso.resolve(),
    )


def boot_disk(
    disk: Path,
    *,
    firmware: str = "bios",
    memory_mb: int = 512,
    timeout: float = 900,
    marker: str,
    accel: str = "auto",
    log: Path | None = None,
    smp: int = 2,
) -> BootResult:
    """Boot a raw disk image (livemedia --make-disk) under SeaBIOS or OVMF; its boot
    loader's default entry must boot unattended to the marker. The image is not changed."""
    if not disk.is_file():
        raise ComposerError(f"boot check: disk image {disk} does not exist")
    return _boot_media(
        "disk", firmware=firmware, memory_mb=memory_mb, timeout=timeout, marker=marker, accel=accel, log=log, smp=smp,
        disk=disk.resolve(),
    )  # fmt: skip


def boot_netboot(
    tftp_dir: Path,
    bootfile: str,
    *,
    firmware: str = "bios",
    memory_mb: int = 512,
    timeout: float = 900,
    marker: str,
    accel: str = "auto",
    log: Path | None = None,
    smp: int = 2,
) -> BootResult:
    """Boot from the network: qemu's DHCP hands out `bootfile`, served by its TFTP
    server from tftp_dir (the firmware's iPXE ROM fetches it; an iPXE script works
    as the boot file, and may fetch the rest over HTTP from 10.0.2.2 = the host)."""
    if not tftp_dir.is_dir():
        raise ComposerError(f"boot check: TFTP directory {tftp_dir} does not exist")
    if not (tftp_dir / bootfile).is_file():
        raise ComposerError(f"boot check: boot file {tftp_dir / bootfile} does not exist")
    return _boot_media(
        "netboot",
        firmware=firmware,
        memory_mb=memory_mb,
        timeout=timeout,
        marker=marker,
        accel=accel,
        log=log,
        smp=smp,
        tftp_dir=tftp_dir.resolve(),
        bootfile=bootfile,
    )


def _boot_media(
    what: str,
    *,
    firmware: str,
    memory_mb: int,
    timeout: float,
    marker: str,
    accel: str,
    log: Path | None,
    smp: int,
    enter: bool = False,
    **media: Any,
) -> BootResult:
    """boot_argv for firmware boots (CD or network); UEFI gets a private copy of OVMF's
    variable store, which the firmware writes to."""
    with tempfile.TemporaryDirectory(prefix="composer-ovmf-") as tmp:
        vars_copy = None
        if firmware == "uefi":
            _, vars_src = find_ovmf()
            vars_copy = Path(tmp) / "OVMF_VARS.fd"
            shutil.copyfile(vars_src, vars_copy)
        kernel = media_kernel(Path(tmp), **media) if accel == "auto" else None
        argv = qemu_media_argv(
            memory_mb=memory_mb, accel=resolve_accel(accel, kernel), smp=smp, firmware=firmware, ovmf_vars=vars_copy, **media
        )
        return boot_argv(
            argv,
            memory_mb=memory_mb,
            timeout=timeout,
            marker=marker,
            log=log,
            what=f"boot check ({firmware.upper()} {what})",
            enter=enter,
        )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        debug("http: " + format % args)


@contextlib.contextmanager
def serve_http(directory: Path, port: int = 0):
    """Serve directory over HTTP on 127.0.0.1 (loopback only) while the block runs;
    yields the port. A qemu guest on user networking reaches it as 10.0.2.2:port."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="composer-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_nbd(image: Path, port: int, export: str) -> Iterator[None]:
    """Export image read-only with nbd-server on 127.0.0.1:port (loopback only) while the
    block runs; a qemu guest on user networking reaches it as 10.0.2.2:port."""
    if shutil.which("nbd-server") is None:
        raise ComposerError("boot check: no nbd-server on this host (Debian: apt-get install nbd-server)")
    if not image.is_file():
        raise ComposerError(f"boot check: {image} does not exist")
    with tempfile.TemporaryDirectory(prefix="composer-nbd-") as tmp:
        conf, pidfile = Path(tmp) / "nbd-server.conf", Path(tmp) / "nbd-server.pid"
        conf.write_text(nbd_server_conf(NbdServer("127.0.0.1", port, export), os.fspath(image.resolve()), listen="127.0.0.1"))
        # As a daemon (its own session, one child per client): with -d it would exit after
        # its first client, and a boot check may boot several times.
        proc = subprocess.run(["nbd-server", "-C", os.fspath(conf), "-p", os.fspath(pidfile)], capture_output=True, check=False)
        pid = None
        try:
            deadline = time.monotonic() + 10
            while pid is None or not _listening(port):
                if pidfile.is_file() and pidfile.read_text().strip().isdigit():
                    pid = int(pidfile.read_text())
                if proc.returncode != 0 or time.monotonic() > deadline:
                    err = proc.stderr.decode(errors="replace").strip()
                    raise ComposerError(f"boot check: nbd-server did not start on 127.0.0.1:{port}: {err[-300:]}")
                time.sleep(0.1)
            yield
        finally:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)  # the daemon leads its own session: it and its children


@contextlib.contextmanager
def serve_netboot(tree: Path, meta: dict[str, Any]) -> Iterator[None]:
    """Serve what a netboot tree's guest reaches as 10.0.2.2 (this host's loopback) while the
    block runs: the tree over HTTP at its url's port, install.img over NBD when netboot.json
    (meta) names an NBD server there."""
    url = urlsplit(meta["url"])
    with contextlib.ExitStack() as stack:
        if url.hostname == "10.0.2.2" and url.scheme == "http":
            stack.enter_context(serve_http(tree, url.port or 80))
        nbd = meta.get("nbd")
        if nbd is not None and nbd.get("host") == "10.0.2.2":
            stack.enter_context(serve_nbd(tree / "images" / "install.img", nbd["port"], nbd["export"]))
        yield


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
