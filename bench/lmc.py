"""`make bench`, third part (issue 21 item 5): a live build beside the real livemedia-creator.

livemedia-creator (lmc) of lorax 40.5.19 (../shared/peers/lorax-40.5.19; GPL: run, never copied)
cannot install a kickstart here: its --no-virt runs anaconda (/usr/sbin/anaconda; Debian has
none) and its other path boots an installer ISO in a VM. It does run from an already installed
filesystem image (--fs-image), so both tools start from the same installed tree: composer makes
the Fedora-shaped product's live spin (tools/testproduct/fedora-live.ks) into an ext4 image
(`composer livemedia --make-fsimage`, timed), lmc builds --make-pxe-live and --make-iso from a
copy of that image, and composer builds the same two outputs from the kickstart. The tables put
side by side what comes after the install, stage by stage (rootfs image, dracut, mksquashfs, the
PXE or ISO outputs): composer's stages from its log (`name: done in Ns`), lmc's from the commands
its program.log times (`Running... dracut` .. `Return code`). Like with like: the ISO with lmc's
default runtime (--rootfs-type squashfs, the tree in squashfs) on both sides; the PXE image of
both is squashfs holding LiveOS/rootfs.img (ext4), the only layout lmc's --make-pxe-live makes.

What lmc cannot do here (a step failing on this host) is one line with its error; a --make-iso
that fails so is tried again at once with scripts/lorax-oracle's host wrappers first on lmc's PATH
(grub2-mkimage as Debian's grub-mkimage, mkefiboot without a loop device or vfat). lmc mounts
(its input image on a loop device, /proc, devtmpfs and /var/tmp in a chroot): after each run
anything it left mounted under build/bench/lmc is unmounted and its loop devices detached, and
nothing is deleted while mounted. Needs root (lmc does).

lmc itself: lorax-40.5.19-1's src/sbin/livemedia-creator (the peer's copy has only lorax and
mkefiboot in src/sbin) at build/peers/livemedia-creator, taken with git from a clone of
weldr/lorax named by BENCH_LORAX_GIT when missing; run by Debian's python3 in a venv with the
system's site packages (dnf, rpm, mako, librepo) plus pykickstart from PyPI (Debian 12 has no
python3-pykickstart), with python3-cdio from Debian, under `env -i`. If it cannot be prepared the
bench says why in one line and exits 0. BENCH_RUNS=N: N rounds, who goes first alternating.
Writes build/bench/lmc.json and build/bench/lmc.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import BUILD, MIB, OUT, ROOT, children_cpu, clock_offset, load, median_run, part, ratio, rotation
from fedora import PEER

from testproduct.fedoraproduct import build_fedoraproduct

LOUT = OUT / "lmc"
TAG = "lorax-40.5.19-1"
SCRIPT = BUILD / "peers" / "livemedia-creator"
VENV = Path(os.environ.get("BENCH_LMC_VENV", "/var/cache/composer-peers/lmc-venv"))
TEMPLATES = PEER / "share/templates.d/99-generic"
PRODUCT = ("--project", "Fedora", "--releasever", "43")
MAKES = ("pxe-live", "iso")
# composer's --rootfs-type for each output: the layout lmc makes (see the docstring).
COMPOSER_ARGS = {"pxe-live": ("--rootfs-type", "squashfs-ext4"), "iso": ("--rootfs-type", "squashfs")}
# dracut's livenet (in lmc's dracut arguments for every output, in composer's PXE initramfs) needs
# dracut's network modules (dracut-network, which Fedora's dracut-live requires and this product's
# does not) and a network stack for them (dhclient; dbus); fedora-live.ks's groups bring none of
# them: added for both tools, or dracut stops at "module 'livenet' cannot be found or installed".
NETWORK_PACKAGES = ("dracut-network", "isc-dhcp-client", "dbus-daemon")
# Debian packages lmc imports or runs (python3-cdio: pylorax.mount's iso9660).
LMC_DEBS = ("python3-dnf", "python3-rpm", "python3-mako", "python3-librepo", "python3-selinux", "python3-cdio") + (
    "squashfs-tools",
    "xorriso",
    "isomd5sum",
    "e2fsprogs",
)
ROWS = {
    "install": "install: %pre, %packages, kickstart (lmc: none, it starts from composer's fsimage)",
    "rootfs image": "rootfs image (composer: ext4 of the tree; lmc: fsck.ext4 -E discard of its input)",
    "dracut": "dracut",
    "squashfs": "mksquashfs",
    "dracut + squashfs": "dracut + mksquashfs, wall (composer overlaps them for ext4)",
    "outputs": "outputs (PXE files / media tree, boot.iso; lmc: templates, xorrisofs, copy to --resultdir)",
    "start, checks, other": "start, checks, other",
}
OUTPUTS = {
    "initrd": ("images/pxeboot/initrd.img", "initramfs-*.img", "initrd*.img"),
    "squashfs.img": ("LiveOS/squashfs.img", "live-rootfs.squashfs.img"),
    "boot.iso": ("images/boot.iso",),
}
_STAMP = re.compile(r"^\[\s*([\d.]+)s\] (.*)$")  # composer's progress lines
_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")  # lorax's logging asctime


# --- parsing (pure; tests/unit/test_bench_lmc.py) ---


def composer_live_stages(text: str, wall: float) -> dict[str, float]:
    """Stage times of one `composer livemedia` from its log: each stage's `name: done in Ns`
    (summed when it repeats) and, when mksquashfs ran beside dracut, the pair's wall time from
    `squashfs ... (beside dracut)` to `squashfs: NAME N MiB (xz), Ns beside other work`."""
    done: dict[str, float] = {}
    beside = pair_from = pair_to = None
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        t, msg = float(m.group(1)), m.group(2)
        if d := re.fullmatch(r"(.+?): done in ([\d.]+)s", msg):
            done[d.group(1)] = done.get(d.group(1), 0.0) + float(d.group(2))
        elif msg.startswith("squashfs ... (beside"):
            pair_from = t
        elif s := re.match(r"squashfs: \S+ [\d.]+ MiB \(\w+\), ([\d.]+)s beside", msg):
            beside, pair_to = float(s.group(1)), t
    dracut = done.get("dracut", 0.0)
    squashfs = beside if beside is not None else done.get("squashfs", 0.0)
    pair = pair_to - pair_from if pair_from is not None and pair_to is not None else dracut + squashfs
    stages = {
        "install": sum(done.get(k, 0.0) for k in ("%pre", "install", "kickstart")),
        "rootfs image": done.get("rootfs", 0.0),
        "dracut": dracut,
        "squashfs": squashfs,
        "dracut + squashfs": pair,
        "outputs": sum(done.get(k, 0.0) for k in ("media tree", "boot.iso", "pxe-live", "fsimage")),
    }
    counted = stages["install"] + stages["rootfs image"] + pair + stages["outputs"]
    stages["start, checks, other"] = wall - counted
    return {k: round(v, 2) for k, v in stages.items()}


def log_time(line: str) -> float | None:
    """Epoch seconds of a lorax log line's asctime (local time, as lorax logs it), else None."""
    m = _TIME.match(line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


@dataclasses.dataclass(frozen=True)
class Run:
    """One external command lmc ran, as its program.log times it (epoch seconds, as logged)."""

    name: str  # argv[0]'s base name
    start: float
    end: float
    rc: int


def program_runs(text: str) -> list[Run]:
    """pylorax.executils logs each command as `Running... ARGV`, its output, then `Return code: N`
    (or `Error running NAME: why` when it could not start, taken as 127); one at a time."""
    runs: list[Run] = []
    opened: tuple[str, float] | None = None
    for line in text.splitlines():
        t = log_time(line)
        m = re.match(r"\S+ \S+ \w+: (?:Running\.\.\. (\S+)|Return code: (-?\d+)|Error running (\S+):)", line)
        if t is None or m is None:
            continue
        if m.group(1):
            opened = (os.path.basename(m.group(1)), t)
        elif opened is not None:
            runs.append(Run(opened[0], opened[1], t, int(m.group(2)) if m.group(2) else 127))
            opened = None
    return runs


def lmc_stages(runs: list[Run], first_logged: float | None, start: float, end: float, wall: float) -> dict[str, float]:
    """lmc's stages from its commands (start, end: epoch seconds of the process; first_logged:
    its main log's first time, which puts the log's clock on ours). dracut and mksquashfs run one
    after the other; the outputs are everything after the last of them."""
    shift = clock_offset(first_logged, start) if first_logged is not None else 0.0

    def total(*names: str) -> float:
        return sum(r.end - r.start for r in runs if r.name in names)

    packed = max((r.end for r in runs if r.name in ("dracut", "mksquashfs")), default=None)
    if packed is None:
        raise ValueError("no dracut or mksquashfs in lmc's program.log")
    stages = {
        "install": 0.0,
        "rootfs image": total("fsck.ext4"),
        "dracut": total("dracut"),
        "squashfs": total("mksquashfs"),
    }
    stages["dracut + squashfs"] = stages["dracut"] + stages["squashfs"]
    stages["outputs"] = end - (packed + shift)
    stages["start, checks, other"] = wall - stages["rootfs image"] - stages["dracut + squashfs"] - stages["outputs"]
    return {k: round(v, 2) for k, v in stages.items()}


def partial_stages(runs: list[Run]) -> dict[str, float]:
    """The stages of a run that failed, from the commands that ended well before it stopped:
    still a comparison, stage by stage, as far as lmc got."""
    ok = [r for r in runs if r.rc == 0]
    stages = {"rootfs image": "fsck.ext4", "dracut": "dracut", "squashfs": "mksquashfs"}
    out = {
        k: round(sum(r.end - r.start for r in ok if r.name == n), 2) for k, n in stages.items() if any(r.name == n for r in ok)
    }
    if "dracut" in out and "squashfs" in out:
        out["dracut + squashfs"] = round(out["dracut"] + out["squashfs"], 2)
    return out


def commands_s(runs: list[Run]) -> dict[str, float]:
    """Seconds spent in each command lmc ran (for the JSON: mount, ln, xorrisofs, ...)."""
    out: dict[str, float] = {}
    for r in runs:
        out[r.name] = round(out.get(r.name, 0.0) + r.end - r.start, 2)
    return out


def lmc_error(main_log: str, program_log: str, stderr: str) -> str:
    """Why lmc failed, in one line: the last two ERROR messages of its log, the command that
    failed (program.log), else the last line of its stderr."""
    errors = re.findall(r"^\S+ \S+ ERROR [^:]*: (.+)$", main_log, re.M)
    failed = [r for r in program_runs(program_log) if r.rc != 0]
    parts = errors[-2:]
    if failed:
        parts.append(f"{failed[-1].name} exited {failed[-1].rc}" if failed[-1].rc != 127 else f"{failed[-1].name}: cannot run")
    if not parts:
        tail = stderr.strip().splitlines()
        parts = tail[-1:] or ["no error logged"]
    return " | ".join(p.strip() for p in parts)[:400]


def mounts_under(base: Path, findmnt: str) -> list[str]:
    """Mount points at or under base in `findmnt -rn -o TARGET` output, deepest first."""
    b = str(base)
    found = [t.replace("\\x20", " ") for t in findmnt.split()]
    return sorted((t for t in found if t == b or t.startswith(b + "/")), key=lambda t: t.count("/"), reverse=True)


def loops_under(base: Path, losetup: str) -> list[str]:
    """Loop devices whose backing file is under base, in `losetup -ln -O NAME,BACK-FILE` output."""
    b = str(base) + "/"
    return [f[0] for f in (line.split(None, 1) for line in losetup.splitlines()) if len(f) == 2 and f[1].startswith(b)]


# --- the host: mounts, preparing lmc ---


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _last(text: str) -> str:
    return (text.strip().splitlines() or ["?"])[-1]


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def unmount_under(base: Path) -> list[str]:
    """Unmount what is mounted under base (deepest first, lazily when busy) and detach the loop
    devices of files under it; returns what was left (empty after a clean lmc run)."""
    base = base.resolve()
    left = []
    for target in mounts_under(base, _out(["findmnt", "-rn", "-o", "TARGET"])):
        if subprocess.run(["umount", target], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        left.append(f"mount {target}")
    for dev in loops_under(base, _out(["losetup", "-ln", "-O", "NAME,BACK-FILE"])):
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
        left.append(f"loop {dev}")
    return left


def safe_rmtree(path: Path) -> None:
    """rmtree that never goes through a mount: lmc's chroot binds the host's /var/tmp and mounts
    devtmpfs, which a recursive delete would empty on the host."""
    if not path.exists():
        return
    unmount_under(path)
    still = mounts_under(path.resolve(), _out(["findmnt", "-rn", "-o", "TARGET"]))
    if still:
        raise SystemExit(f"bench/lmc.py: {still[0]} is still mounted: {path} not deleted")
    shutil.rmtree(path)


def lmc_env(wrappers: Path | None = None) -> dict[str, str]:
    """lmc as lorax's run scripts run lorax: a bare environment; the peer's src/sbin on PATH as an
    installed lorax has its mkefiboot there (live/efi.tmpl runs it); wrappers: first on PATH."""
    path = (f"{wrappers}:" if wrappers else "") + f"{PEER / 'src/sbin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"PATH": path, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "PYTHONPATH": str(PEER / "src")}


def oracle_wrappers(script: str) -> dict[str, str]:
    """{name: text} of the host wrappers scripts/lorax-oracle writes so that lorax's stock templates
    make a boot.iso on this host: grub2-mkimage as Debian's grub-mkimage, mkefiboot with mtools (no
    loop device, no vfat)."""
    return dict(re.findall(r"cat > \"\$base/shims/([\w.-]+)\" <<'EOF'\n(.*?)\nEOF\n", script, re.S))


def write_wrappers(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in oracle_wrappers((ROOT / "scripts/lorax-oracle").read_text()).items():
        (dest / name).write_text(text + "\n")
        (dest / name).chmod(0o755)
    return dest


def lmc_script() -> tuple[Path | None, str]:
    """build/peers/livemedia-creator, taken from BENCH_LORAX_GIT (a clone or bare git directory
    of weldr/lorax) at lorax-40.5.19-1 when missing; (None, why) when it cannot be had."""
    if SCRIPT.is_file():
        return SCRIPT, ""
    git = os.environ.get("BENCH_LORAX_GIT", "")
    if not git:
        return None, (
            f"{SCRIPT} is missing (the peer's src/sbin has no livemedia-creator): "
            "BENCH_LORAX_GIT=DIR names a git clone of weldr/lorax to take it from"
        )
    gitdir = Path(git) / ".git" if (Path(git) / ".git").exists() else Path(git)
    proc = subprocess.run(
        ["git", f"--git-dir={gitdir}", "show", f"{TAG}:src/sbin/livemedia-creator"], capture_output=True, check=False
    )
    if proc.returncode != 0:
        return None, f"git show {TAG}:src/sbin/livemedia-creator in {gitdir}: {proc.stderr.decode(errors='replace').strip()}"
    SCRIPT.parent.mkdir(parents=True, exist_ok=True)
    SCRIPT.write_bytes(proc.stdout)
    SCRIPT.chmod(0o755)
    return SCRIPT, ""


def lmc_python() -> tuple[Path | None, str]:
    """Debian's python3 (its python3-dnf is Debian's) in a venv that sees the system's dnf, rpm,
    mako and librepo, plus pykickstart from PyPI; the Debian packages lmc needs installed first."""
    missing = [p for p in LMC_DEBS if "install ok installed" not in _out(["dpkg-query", "-W", "-f=${Status}", p])]
    python = VENV / "bin/python"
    steps = [
        (bool(missing), ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]),
        (not python.exists(), ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(VENV)]),
        (True, [str(python), "-m", "pip", "install", "-q", "pykickstart"]),
    ]
    for needed, argv in steps:
        if not needed or (argv[0] == str(python) and _imports(python, "pykickstart")):
            continue
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if proc.returncode != 0:
            return None, f"{' '.join(argv)} failed: {_last(proc.stderr)}"
    return python, ""


def _imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def prepare_lmc() -> tuple[list[str] | None, str]:
    """(the argv that runs lmc, "") or (None, why not, in one line); lmc's --help imports all it needs."""
    if os.geteuid() != 0:
        return None, "livemedia-creator needs root (loop mounts, a chroot)"
    if not (PEER / "src/pylorax/creator.py").is_file() or not TEMPLATES.is_dir():
        return None, f"lorax 40.5.19 (src/pylorax, share/templates.d/99-generic) is not at {PEER}"
    script, why = lmc_script()
    if script is None:
        return None, why
    python, why = lmc_python()
    if python is None:
        return None, why
    argv = [str(python), str(script)]
    proc = subprocess.run([*argv, "--help"], env=lmc_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, f"livemedia-creator --help failed (exit {proc.returncode}): {_last(proc.stderr)}"
    return argv, ""


# --- the runs ---


def sizes(result: Path) -> dict[str, object]:
    found: dict[str, float | None] = {}
    for name, patterns in OUTPUTS.items():
        f = next((p for pat in patterns for p in sorted(result.glob(pat))), None)
        found[name] = round(f.stat().st_size / MIB, 1) if f else None
    return {"sizes_mib": found}


def run_composer_live(ks: Path, make: str, base: Path, *extra: str) -> dict[str, object]:
    """`composer livemedia --no-virt --make-MAKE` of the kickstart, as a user runs it (a new process)."""
    safe_rmtree(base)
    (base / "tmp").mkdir(parents=True)
    log = base / "livemedia.log"
    argv = [sys.executable, "-m", "composer", "livemedia", "--no-virt", f"--make-{make}", "--ks", str(ks), *PRODUCT]
    argv += ["--tmp", str(base / "tmp"), "--resultdir", str(base / "result"), "--logfile", str(log), *extra]
    l0, t0, c0 = load(), time.monotonic(), children_cpu()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = round(time.monotonic() - t0, 2)
    res: dict[str, object] = {"wall_s": wall, "cpu_s": round(children_cpu() - c0, 1), "load_before": l0, "load_after": load()}
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-2:]
        return res | {"failed": f"composer livemedia --make-{make} failed (exit {proc.returncode}): {' | '.join(tail)}"}
    res["stages"] = composer_live_stages(log.read_text(errors="replace"), wall)
    return res | sizes(base / "result")


def run_lmc(lmc: list[str], ks: Path, fsimage: Path, make: str, base: Path, wrappers: Path | None = None) -> dict[str, object]:
    """lmc --make-MAKE --fs-image of a copy of composer's fsimage (lmc writes into its input:
    fsck -E discard, dracut in the mounted image); the copy is untimed. --ks: lmc sizes the ISO's
    runtime from its `part` lines. wrappers: host wrappers first on its PATH."""
    safe_rmtree(base)
    (base / "tmp").mkdir(parents=True)
    image, logs = base / "fsimage.img", base / "logs"
    subprocess.run(["cp", "--sparse=always", str(fsimage), str(image)], check=True)
    argv = [*lmc, f"--make-{make}", "--fs-image", str(image), "--ks", str(ks), *PRODUCT, "--lorax-templates", str(TEMPLATES)]
    argv += ["--tmp", str(base / "tmp"), "--resultdir", str(base / "result"), "--logfile", str(logs / "lmc.log")]
    l0, start, t0, c0 = load(), time.time(), time.monotonic(), children_cpu()
    try:
        proc = subprocess.run(
            argv, env=lmc_env(wrappers), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, cwd=base
        )
    finally:
        left = unmount_under(base)
    wall, end = round(time.monotonic() - t0, 2), time.time()
    res: dict[str, object] = {"wall_s": wall, "cpu_s": round(children_cpu() - c0, 1), "load_before": l0, "load_after": load()}
    res["left_behind"], res["host_wrappers"] = left, wrappers is not None
    safe_rmtree(base / "tmp")  # lmc keeps its work directory when it fails (the runtime image: GBs)
    main_log, prog_log = (_read(logs / n) for n in ("lmc.log", "program.log"))
    image.unlink(missing_ok=True)
    runs = program_runs(prog_log)
    res["commands_s"] = commands_s(runs)
    if proc.returncode != 0 or not (base / "result").is_dir():
        why = lmc_error(main_log, prog_log, proc.stderr.decode(errors="replace"))
        return res | {"failed": why, "partial_stages": partial_stages(runs)}
    first = next((t for t in map(log_time, main_log.splitlines()) if t is not None), None)
    res["stages"] = lmc_stages(runs, first, start, end, wall)
    return res | sizes(base / "result")


def lmc_turn(lmc: list[str], ks: Path, fsimage: Path, make: str, i: int, state: dict) -> list[dict]:
    """lmc's runs of one output in round i. A --make-iso that fails as lmc is installed (the reason
    kept in state["cannot"]) is tried again at once with lorax-oracle's host wrappers, which later
    rounds then use; an output that fails that way too is not tried again."""
    wrappers = state["wrap"].get(make)
    with part(f"--make-{make}: lmc{' + host wrappers' if wrappers else ''} #{i + 1}"):
        r = run_lmc(lmc, ks, fsimage, make, LOUT / f"lmc-{make}", wrappers)
    if "failed" not in r:
        return [r]
    print(f"bench: lmc --make-{make}{' + host wrappers' if wrappers else ''}: {r['failed']}", flush=True)
    if wrappers is None:
        state["cannot"].setdefault(make, r["failed"])
    else:
        state["wrapped_failed"][make] = r["failed"]
    if wrappers is None and make == "iso":
        state["wrap"][make] = write_wrappers(LOUT / "host-wrappers")
        return [r, *lmc_turn(lmc, ks, fsimage, make, i, state)]
    state["stopped"].add(make)
    return [r]


def rounds(ks: Path, fsimage: Path, lmc: list[str], runs: int, res: dict) -> None:
    """`runs` rounds of both outputs, each by composer and by lmc, who goes first alternating
    (lmc_turn: what lmc cannot do, and its second try)."""
    state: dict = {"cannot": {}, "wrap": {}, "wrapped_failed": {}, "stopped": set()}
    got: dict[str, dict[str, list[dict]]] = {make: {"composer": [], "lmc": []} for make in MAKES}
    for i in range(runs):
        for make in MAKES:
            for who in rotation(["composer", "lmc"], i):
                if who == "lmc":
                    if make not in state["stopped"]:
                        got[make]["lmc"] += lmc_turn(lmc, ks, fsimage, make, i, state)
                    continue
                with part(f"--make-{make}: composer #{i + 1}"):
                    r = run_composer_live(ks, make, LOUT / f"composer-{make}", *COMPOSER_ARGS[make])
                if "failed" in r:
                    print(f"bench: composer --make-{make}: {r['failed']}", flush=True)
                got[make]["composer"].append(r)
    for make, by in got.items():
        res[make] = {}
        for who, done in by.items():
            res[make][f"{who}_runs"] = done
            ok = [r for r in done if "failed" not in r]
            if ok:
                res[make][who] = median_run(ok)
    res["lmc_cannot"], res["lmc_wrapped_failed"] = state["cannot"], state["wrapped_failed"]


def bench_kickstart(text: str, repo: Path) -> str:
    """fedora-live.ks with @REPO@ the repository's URL and NETWORK_PACKAGES in %packages."""
    return text.replace("@REPO@", f"file://{repo}").replace(
        "\n%packages\n", "\n%packages\n" + "\n".join(NETWORK_PACKAGES) + "\n", 1
    )


def host_notes() -> list[str]:
    """What this host lacks that lorax's mkefiboot uses (a loop-mounted FAT image)."""
    notes = []
    if "vfat" not in Path("/proc/filesystems").read_text():
        notes.append("this host's kernel has no vfat (/proc/filesystems)")
    if shutil.which("udevadm") is None:
        notes.append("no udevadm (pylorax's LoopDev runs `udevadm settle`)")
    return notes


def main() -> int:
    if os.geteuid() != 0:
        print("bench/lmc.py: skipped: livemedia-creator needs root (loop mounts, a chroot)")
        return 0
    t_all = time.monotonic()
    safe_rmtree(LOUT)
    LOUT.mkdir(parents=True)
    res: dict[str, Any] = {"load_at_start": load(), "cores": os.cpu_count(), "host": host_notes()}
    with part("Fedora-shaped product repository"):
        repo = build_fedoraproduct(BUILD / "fedoraproduct")
    ks = LOUT / "fedora-live.ks"
    ks.write_text(bench_kickstart((ROOT / "tools/testproduct/fedora-live.ks").read_text(), repo))
    with part("livemedia-creator 40.5.19: script, venv, Debian packages (untimed)"):
        lmc, why = prepare_lmc()
    if lmc is None:
        print(f"bench/lmc.py: skipped: {why}")
        res["skipped"] = why
        write(res, t_all)
        return 0
    with part("composer livemedia --make-fsimage (lmc's input)"):
        res["fsimage"] = fs = run_composer_live(ks, "fsimage", LOUT / "fsimage")
    image = LOUT / "fsimage/result/fsimage.img"
    if "failed" in fs:
        raise SystemExit(f"bench/lmc.py: {fs['failed']}")
    fs["image_mib"] = round(image.stat().st_size / MIB, 1)
    fs["image_allocated_mib"] = round(image.stat().st_blocks * 512 / MIB, 1)
    rounds(ks, image, lmc, max(1, int(os.environ.get("BENCH_RUNS", "1"))), res)
    res["left_at_end"] = unmount_under(LOUT)  # nothing, unless lmc leaked past its own cleanup
    write(res, t_all)
    print(table(res))
    return 1 if any("composer" not in res[m] for m in MAKES) else 0  # composer failing is a bug


def write(res: dict, t_all: float) -> None:
    res["bench_wall_s"] = round(time.monotonic() - t_all, 1)
    res["load_at_end"] = load()
    (OUT / "lmc.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "lmc.md").write_text(table(res))


# --- the tables ---


def make_table(make: str, r: dict, fs: dict, cannot: str | None, wrapped_failed: str | None) -> list[str]:
    """One output: each stage of composer's and lmc's median runs, the ratio, the sizes."""
    c, lo = r.get("composer"), r.get("lmc")
    lines = [f"### --make-{make}", ""]
    if c is None:
        return lines + [f"composer: {r['composer_runs'][-1]['failed']}", ""]
    # lmc failed: its stages as far as it got (the commands that ended well), marked as such.
    lo_stages = lo["stages"] if lo else (r["lmc_runs"][-1].get("partial_stages", {}) if r["lmc_runs"] else {})
    head = "lmc 40.5.19" + (
        " + host wrappers" if lo and lo.get("host_wrappers") else "" if lo else " (failed run: up to its failure)"
    )
    lines += [f"| stage (wall s) | composer | {head} | composer/lmc |", "|---|---:|---:|---:|"]
    for key, label in ROWS.items():
        cs, ls = c["stages"][key], lo_stages.get(key)
        lines.append(f"| {label} | {cs} | {ls if ls is not None else '-'} | {ratio(cs, ls) if ls is not None else 'n/a'} |")
    after = round(c["wall_s"] - c["stages"]["install"], 2)
    if lo:
        whole = round(fs["wall_s"] + lo["wall_s"], 2)
        lines.append(f"| **after the install** | **{after}** | **{lo['wall_s']}** | **{ratio(after, lo['wall_s'])}** |")
        lines.append(
            f"| **from the kickstart** (lmc: + composer's fsimage {fs['wall_s']} s) | **{c['wall_s']}** | **{whole}** "
            f"| **{ratio(c['wall_s'], whole)}** |"
        )
    else:
        lines.append(f"| **after the install** | **{after}** | - | n/a |")
        lines.append(f"| **from the kickstart** | **{c['wall_s']}** | - | n/a |")
    lines += ["", "| output MiB | composer | lmc 40.5.19 |", "|---|---:|---:|"]
    for name, mib in c["sizes_mib"].items():
        theirs = lo["sizes_mib"].get(name) if lo else None
        if mib is not None or theirs is not None:
            lines.append(f"| {name} | {mib if mib is not None else '-'} | {theirs if theirs is not None else '-'} |")
    if cannot:
        lines += ["", f"lmc --make-{make}, as lorax installs it, cannot run here: {cannot}"]
        if any(x.get("host_wrappers") for x in r["lmc_runs"]):
            lines.append(
                "With scripts/lorax-oracle's host wrappers first on its PATH (grub2-mkimage as Debian's grub-mkimage; "
                "mkefiboot with mtools, no loop device, no vfat): "
                + (f"failed too: {wrapped_failed}" if wrapped_failed else "it ran (the lmc column above).")
            )
    return lines + [""]


def table(r: dict) -> str:
    if "skipped" in r:
        return f"livemedia-creator 40.5.19 beside composer livemedia: skipped: {r['skipped']}\n"
    fs = r["fsimage"]
    cannot = r.get("lmc_cannot", {})
    runs = {m: ([x["wall_s"] for x in r[m]["composer_runs"]], [x["wall_s"] for x in r[m]["lmc_runs"]]) for m in MAKES}
    lines = [
        "The Fedora-shaped product's live spin (tools/testproduct/fedora-live.ks), `composer livemedia` beside "
        f"livemedia-creator 40.5.19; load {r['load_at_start']} at start, {r['load_at_end']} at end; {r['cores']} cores.",
        "",
        "lmc cannot install a kickstart here (--no-virt runs anaconda, which Debian does not have): it starts from "
        f"composer's `--make-fsimage` of the same kickstart ({fs['wall_s']} s, of which install {fs['stages']['install']} s; "
        f"ext4 {fs['image_mib']} MiB, {fs['image_allocated_mib']} MiB allocated). composer builds each output from the "
        "kickstart; **after the install** compares what both do from the installed tree on. "
        + "; ".join(f"--make-{m} runs (s): composer {c}, lmc {lo}" for m, (c, lo) in runs.items())
        + ".",
        "",
    ]
    for make in MAKES:
        lines += make_table(make, r[make], fs, cannot.get(make), r.get("lmc_wrapped_failed", {}).get(make))
    if cannot and r.get("host"):
        lines += [f"This host: {'; '.join(r['host'])}.", ""]
    left = [x for m in MAKES for run in r[m]["lmc_runs"] for x in run.get("left_behind", [])] + r.get("left_at_end", [])
    lines.append(f"Left mounted by lmc and cleaned up by the bench: {', '.join(left) if left else 'nothing'}.")
    lines += ["", f"All of this part: {r['bench_wall_s']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
