"""Failure hygiene: faults injected at the stage boundaries of a real `composer runtime`.

Every fault must leave no mount, no loop device, no child process and nothing under
the final output name, end with one clear error line, and not stop the next run from
succeeding. Nothing is mocked: the faults are a package that is not there, a package
whose %pre scriptlet fails, a dracut module that does not exist, a 64 MiB tmpfs as the
work directory, a filesystem that fills up while the images are written, and
SIGTERM/SIGINT/SIGKILL sent to the composer process.

The signal matrix: SIGTERM and SIGHUP (what Pungi, Koji and a closed terminal send) at an
early stage (install) and a late one (squashfs) of `runtime`, `boot-iso`, `netboot` and
`composer lorax`; each must end within seconds, with `composer: interrupted by SIG...;
cleaned up`, exit 128+n, and leave no process, mount, loop device, work directory, OUTDIR,
scratch output or temporary directory. Each run is cut early: it shares the tree cache
with the other slow tests (build/cache), so even the late stage comes within seconds.

After SIGKILL nobody can clean up, so the killed build's work directory (and its
scratch directory beside OUTDIR) may remain, but nothing at OUTDIR itself: the next
run recognises them (nobody holds their lock) and deletes them before it starts.

Cost: the module shares one tree cache, so only two tests run a dnf transaction and one
build runs to the end; builds use --rootfs-type squashfs, lz4 and an uncompressed
initramfs (the faults concern cleanup, not compression). Measured on the 2-core machine:
3 minutes at load 3, under 7 at load 10+; most of it is the one complete build. The
signal matrix (17 runs, none built to the end) adds 130 s (measured with one tree cache
miss, at load ~3); 0.3-1 s from the signal to exit, 12 s at most.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BUILD, ROOT, composer

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Env:
    repo: Path
    base: Path
    cache: Path
    dracut_conf: Path


@pytest.fixture(scope="module")
def env(testproduct_repo, tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("faults")
    conf = base / "fast-dracut.conf"
    conf.write_text('compress="cat"\n')  # xz would cost a minute per dracut run
    return Env(testproduct_repo, base, base / "cache", conf)


@pytest.fixture
def case(env, request) -> tuple[Path, Path]:
    """(OUTDIR, WORKDIR) of one test, and the state checked against afterwards."""
    d = env.base / re.sub(r"\W+", "-", request.node.name).strip("-")
    d.mkdir()
    return d / "out", d / "work"


def runtime_args(env: Env, out: Path, work: Path, *extra: str) -> list[str]:
    return [
        "runtime",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        f"file://{env.repo}",
        "--nogpgcheck",
        "--cachedir",
        str(env.cache),
        "--workdir",
        str(work),
        "--compression",
        "lz4",
        "--rootfs-type",
        "squashfs",
        "--dracut-conf",
        str(env.dracut_conf),
        *extra,
        str(out),
    ]


# ------------------------------------------------------------------ what must be left


def mountinfo() -> set[str]:
    return {" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def processes_mentioning(*paths: Path) -> list[str]:
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        if int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(str(x) in cmd for x in paths):
            found.append(f"{p.name}: {cmd[:200]}")
    return found


def loop_devices_mentioning(*paths: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(str(x) in line for x in paths)]


def session_processes(sid: int) -> list[str]:
    """Live processes of the session composer led (started with start_new_session):
    everything it started, bwrap's sandboxes, dracut and mksquashfs included, unless one
    left it. Zombies (dead, waiting for init to reap them) hold nothing and are not counted."""
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            fields = (p / "stat").read_text().rpartition(")")[2].split()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and int(p.name) != sid and fields[0] != "Z":  # fields 3 and 6 of stat
            found.append(f"{p.name}: {cmd[:200]}")
    return found


def assert_clean(out: Path, work: Path, mounts_before: set[str], *, killed: bool = False) -> None:
    # Children die with composer (PR_SET_PDEATHSIG, bwrap --die-with-parent), a moment later.
    deadline = time.monotonic() + 15
    while processes_mentioning(work, out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(work, out) == []
    assert [m for m in mountinfo() - mounts_before if str(out.parent) in m or "composer" in m] == []
    assert loop_devices_mentioning(work, out) == []
    assert not out.exists(), "something was left under the final output name"
    if not killed:
        assert list(out.parent.glob(f".{out.name}.*")) == [], "scratch output left beside OUTDIR"
        assert list(work.iterdir()) == [], "the work directory was not cleaned up"


def error_line(stderr: str) -> str:
    """The one line composer ends a failed run with (progress lines come before it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("composer:")]
    assert len(ours) == 1, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == ours[0], "the error is not the last line"
    assert len(ours[0]) < 1000, ours[0]
    return ours[0]


def run_failing(env: Env, out: Path, work: Path, *extra: str) -> str:
    before = mountinfo()
    proc = composer(*runtime_args(env, out, work, *extra), check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert_clean(out, work, before)
    return error_line(proc.stderr)


# ------------------------------------------------------------------ dnf


def test_missing_required_package(env, case):
    out, work = case
    line = run_failing(env, out, work, "--installpkgs", "no-such-package")
    assert line == "composer: error: no package matches 'no-such-package' in the repositories"


@pytest.fixture(scope="module")
def bad_repo(env) -> Path:
    """A repository with one package whose %pre scriptlet fails (rpm then aborts its install)."""
    top = env.base / "badrepo-build"
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS" / "failing-pre.spec"
    spec.write_text(
        "Name: failing-pre\nVersion: 1\nRelease: 1\nSummary: fails in %pre\nLicense: MIT\nBuildArch: noarch\n"
        "%description\nA fault-injection package.\n"
        "%pre\necho 'failing-pre: refusing to install' >&2\nexit 1\n"
        "%files\n"
    )
    repo = env.base / "badrepo"
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", "--define", f"_rpmdir {repo}", str(spec)],
        check=True,
        capture_output=True,
        env={**os.environ, "HOME": str(top)},
    )
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True, capture_output=True)
    return repo


def test_failing_scriptlet_fails_the_dnf_transaction(env, case, bad_repo):
    out, work = case
    line = run_failing(env, out, work, "--source", f"file://{bad_repo}", "--installpkgs", "failing-pre")
    assert "dnf transaction failed: Error in PREIN scriptlet in rpm package failing-pre" in line, line
    assert list((env.cache / "trees").glob("*")) == [], "a failed install must not be cached"


# ------------------------------------------------------------------ signals


def start(env: Env, out: Path, work: Path, errlog: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "composer", *runtime_args(env, out, work, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=errlog.open("w"),
    )


def wait_for(proc: subprocess.Popen, errlog: Path, pattern: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, errlog.read_text(), re.M):
            return
        if proc.poll() is not None:
            pytest.fail(f"composer ended ({proc.returncode}) before {pattern!r}:\n{errlog.read_text()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    pytest.fail(f"no {pattern!r} after {timeout}s:\n{errlog.read_text()[-3000:]}")


@pytest.mark.parametrize(
    ("sig", "pattern", "delay"),
    [
        (signal.SIGTERM, r"dnf: installing", 3.0),  # dnf is writing the rpm database
        (signal.SIGINT, r"dracut: kernel", 2.0),  # dracut runs under bwrap in the tree
    ],
)
def test_signal_cleans_up(env, case, sig, pattern, delay):
    out, work = case
    errlog = out.parent / "stderr.log"
    before = mountinfo()
    proc = start(env, out, work, errlog)
    wait_for(proc, errlog, pattern)
    time.sleep(delay)
    proc.send_signal(sig)
    time.sleep(0.3)
    proc.send_signal(sig)  # an impatient second one must not cut the cleanup short
    rc = proc.wait(timeout=120)
    stderr = errlog.read_text()
    errlog.unlink()
    assert rc == 128 + sig, stderr[-3000:]
    assert error_line(stderr) == f"composer: interrupted by {sig.name}; cleaned up"
    assert_clean(out, work, before)


# ------------------------------------------------------------------ dracut


def test_failing_dracut(env, case):
    out, work = case
    line = run_failing(env, out, work, "--dracut-arg", "--add", "--dracut-arg", "nonexistent-module")
    assert re.fullmatch(r"composer: error: dracut failed for kernel \S+ \(exit \d+\): .*'nonexistent-module'.*", line), line


# ------------------------------------------------------------------ full disks


@contextlib.contextmanager
def tmpfs(env: Env, name: str, size: str):
    mnt = env.base / f"tmpfs-{name}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "composer-faults", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


def test_full_work_directory(env, case):
    """64 MiB for a tree of ~560 MiB: the copy from the tree cache (or dnf) runs out of room."""
    out, _ = case
    with tmpfs(env, "work", "64m") as mnt:
        work = mnt / "work"
        line = run_failing(env, out, work)
        assert "No space left on device" in line or "space" in line.lower(), line
        assert list(mnt.iterdir()) == [work]


def test_disk_fills_while_writing_images(env):
    """The work and output directories share a filesystem that fills up during mksquashfs.

    A tmpfs big enough for the tree, filled with a ballast file once the squashfs stage
    has begun (as another program filling the disk would): the image write fails, or, if
    mksquashfs was quicker, the copy into OUTDIR does.
    """
    with tmpfs(env, "images", "1g") as mnt:
        out, work = mnt / "out", mnt / "work"
        errlog = env.base / "disk-fills.log"
        before = mountinfo()
        proc = start(env, out, work, errlog)
        wait_for(proc, errlog, r"^\[ *[\d.]+s\] squashfs \.\.\.$")
        ballast = mnt / "ballast"
        with ballast.open("wb") as f:
            size, chunk = 0, 16 << 20
            while chunk >= 4096:  # take every block left, whatever the rounding
                try:
                    os.posix_fallocate(f.fileno(), size, chunk)
                    size += chunk
                except OSError:
                    chunk //= 2
        rc = proc.wait(timeout=600)
        stderr = errlog.read_text()
        assert rc == 1, stderr[-3000:]
        line = error_line(stderr)
        assert "No space left on device" in line or "space" in line.lower(), line
        assert "tree cache hit" in stderr
        ballast.unlink()
        assert_clean(out, work, before)
        assert sorted(p.name for p in mnt.iterdir()) == ["work"]


# ------------------------------------------------------------------ SIGKILL, then a rerun


def test_sigkill_then_rerun(env, case):
    out, work = case
    errlog = out.parent / "stderr.log"
    before = mountinfo()
    proc = start(env, out, work, errlog)
    wait_for(proc, errlog, r"dracut: kernel")
    time.sleep(2)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert_clean(out, work, before, killed=True)
    assert [p.name for p in work.iterdir()], "expected the killed build's work directory (it could not clean up)"

    start_time = time.monotonic()
    rerun = composer(*runtime_args(env, out, work))
    assert "tree cache hit" in rerun.stderr
    assert (out / "images" / "pxeboot" / "initrd.img").stat().st_size > 1 << 20
    # The rerun removed what the killed build left, and left nothing of its own.
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "stderr.log", "work"]
    assert list((env.cache / "trees").glob(".*")) == []
    print(f"rerun after SIGKILL: {time.monotonic() - start_time:.0f}s")


# ------------------------------------------------------------------ the signal matrix

LORAX_TEMPLATES = ROOT / "tools/testproduct/lorax-templates"
# A stage marker composer prints and how long after it the signal comes: early while the
# tree is installed (dnf, or its copy from the tree cache), late while mksquashfs runs.
# late: mksquashfs started (with a lorax template set it runs beside dracut, and says so)
STAGES = {
    "early": (r"^\[ *[\d.]+s\] install \.\.\.$", 0.5),
    "late": (r"^\[ *[\d.]+s\] squashfs \.\.\.( \(beside dracut\))?$", 1.0),
}
EXIT_WITHIN = 20.0  # seconds from the signal to composer's exit, on 2 shared, busy cores


def pipeline_args(env: Env, pipeline: str, d: Path) -> list[str]:
    """The command line of one pipeline, outputs in d/out, work in d/work, cache shared."""
    out, work, cache = d / "out", d / "work", BUILD / "cache"
    if pipeline == "lorax":
        conf = d / "lorax.conf"
        conf.write_text(f"[lorax]\nsharedir = {LORAX_TEMPLATES}\n[compression]\ntype = lz4\n")
        return [
            "lorax",
            "--product=TestProduct",
            "--version=1",
            "--release=1",
            f"--source=file://{env.repo}",
            "--nomacboot",
            "--buildarch=x86_64",
            "--skip-branding",
            "--rootfs-type=squashfs",
            "--dracut-arg=--no-compress",
            "--dracut-arg=--install",
            "--dracut-arg=/.buildstamp",
            f"--logfile={d}/logs/lorax.log",
            f"--cachedir={cache}",
            f"--tmp={work}",
            f"--config={conf}",
            str(out),
        ]
    extra = ["--url", "http://example.com/tree/"] if pipeline == "netboot" else []
    return [
        pipeline,
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        f"file://{env.repo}",
        "--nogpgcheck",
        "--cachedir",
        str(cache),
        "--workdir",
        str(work),
        "--compression",
        "lz4",
        "--rootfs-type",
        "squashfs",
        "--dracut-conf",
        str(env.dracut_conf),
        *extra,
        str(out),
    ]


MATRIX = [
    (p, sig, stage)
    for p in ("runtime", "boot-iso", "netboot", "lorax")
    for sig in (signal.SIGTERM, signal.SIGHUP)
    for stage in ("early", "late")
]
MATRIX.append(("lorax", signal.SIGINT, "late"))  # Ctrl-C: no traceback (lorax's own handling printed one)


@pytest.mark.parametrize(("pipeline", "sig", "stage"), MATRIX, ids=[f"{p}-{sig.name}-{stage}" for p, sig, stage in MATRIX])
def test_signal_matrix(env, case, pipeline, sig, stage):
    d = case[0].parent
    out, work = case
    errlog = d / "stderr.log"
    # The build's own TMPDIR: what it leaves there is its own, whatever else runs on the machine.
    tmp = d / "tmp"
    tmp.mkdir()
    before = mountinfo()
    proc = subprocess.Popen(
        [sys.executable, "-m", "composer", *pipeline_args(env, pipeline, d)],
        stdout=subprocess.DEVNULL,
        stderr=errlog.open("w"),
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp)},
    )
    pattern, delay = STAGES[stage]
    wait_for(proc, errlog, pattern)
    time.sleep(delay)
    proc.send_signal(sig)
    sent = time.monotonic()
    time.sleep(0.3)
    if proc.poll() is None:
        proc.send_signal(sig)  # an impatient second one must not cut the cleanup short
    try:
        rc = proc.wait(timeout=120)
    finally:
        took = time.monotonic() - sent
        at_exit = session_processes(proc.pid)
        print(f"\n{pipeline} {sig.name} {stage}: exit {took:.1f}s after the signal; processes at exit: {at_exit}")
    stderr = errlog.read_text()
    assert rc == 128 + sig, stderr[-3000:]
    assert error_line(stderr) == f"composer: interrupted by {sig.name}; cleaned up"
    assert took < EXIT_WITHIN, f"{took:.1f}s from {sig.name} to exit"
    deadline = time.monotonic() + 5  # PR_SET_PDEATHSIG and bwrap --die-with-parent act a moment later
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == [], "children outlived composer"
    assert processes_mentioning(d) == []
    assert_clean(out, work, before)
    assert list(tmp.iterdir()) == [], "a temporary file or directory was left"
    assert {p.name for p in d.iterdir()} <= {"stderr.log", "work", "logs", "lorax.conf", "tmp"}
    if pipeline == "lorax":
        logs = d / "logs"
        assert f"ERROR: interrupted by {sig.name}" in (logs / "lorax.log").read_text()
        assert f"ERROR: interrupted by {sig.name}" in (logs / "pylorax.log").read_text()
