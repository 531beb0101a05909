"""`make bench`: compose the test product and measure it against baselines taken in the same run.

Prints Markdown tables and writes build/bench/results.json and build/bench/results.md.
Baselines (same machine, same repository, same run):
  - the real lorax 40.5.19 (../shared/peers/lorax-40.5.19/run-lorax, dnf 4) and the current lorax
    46.0 (../shared/peers/lorax-46.0/run-lorax46, libdnf5 in a Debian unstable root) beside
    `composer runtime` with its defaults (xz, btrfs, --no-cache), all as command lines, back to
    back with the same templates and argv: stage by stage, the ratios composer/lorax, install.img
    sizes (when lorax 46.0 cannot run here the bench says why in one line and goes on);
  - the limit: one dnf install of the same packages plus one mksquashfs pass (composer's
    default settings) over the tree the compose shipped;
  - the rootfs-image stage against the lorax way (mkfs on a sparse file, loop mount, cp -a, umount);
  - xz against zstd and lz4: time, size and the RAM floor of the big initrd each one gives.
  - RAM: for every output kind (big initrd, boot.iso as a BIOS and a UEFI CD, split netboot with
    livenet's download, split netboot read on demand over NBD), one table: the usable and the
    thrashing floor bisected in qemu, composer's predicted budget and the physical limit (the
    parts alone, no allowance); also in build/bench/floors.md.
Environment: BENCH_RUNS=N composes each tool N times, rotating which goes first (default 1;
the tables show the median); BENCH_QUICK=1 skips boot.iso, netboot, the compressor comparison
and every qemu boot (RAM floors);
BENCH_RAM=all (default) bisects the floor of every output kind and of the big initrd of every
compressor, xz the output kinds of the default build (xz) only, 0 none. BENCH_LORAX and
BENCH_LORAX46 name other run scripts of the two lorax peers. The load average is recorded with
every part (the machine may be shared).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from composer.config import Compression, Config, RootfsType
from composer.dnf import DnfConfig, DnfSession
from composer.images.rootfs import make_rootfs, tree_size
from composer.images.sparse import allocated_size
from composer.images.squashfs import make_squashfs
from composer.outputs import ram
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.ram import unpacked_ram
from composer.pipelines.bootiso import MediaOptions, compose_boot_iso
from composer.pipelines.netboot import NetbootOptions, compose_netboot, parse_nbd
from composer.pipelines.runtime import KEPT_PREFIX
from composer.verify import BootResult, boot_iso, boot_netboot, find_floors, predicted_floor, serve_netboot
from testproduct import BOOT_MARKER, CHECK_ARGS, build_testproduct

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BUILD", ROOT / "build"))
OUT = BUILD / "bench"
MIB = 2**20
# A boot below the usable floor (the thrashing floor's search) is given this long: the 900 s
# boots of a deep thrash made one bisection take an hour.
THRASH_S = float(os.environ.get("BENCH_THRASH_S", "600"))


def _peer(rel: str, env: str) -> Path:
    """A peer's run script in ../shared beside the checkout (a worktree one level deeper finds it
    one more level up); the environment variable `env` names another."""
    found = next((d / rel for d in (ROOT.parent, ROOT.parent.parent) if (d / rel).exists()), ROOT.parent / rel)
    return Path(os.environ.get(env) or found)


LORAX = _peer("shared/peers/lorax-40.5.19/run-lorax", "BENCH_LORAX")
LORAX46 = _peer("shared/peers/lorax-46.0/run-lorax46", "BENCH_LORAX46")
# Who composes in the rounds: the key in results.json, the name in the tables.
TOOLS = {"composer": "composer", "lorax": "lorax 40.5.19", "lorax46": "lorax 46.0"}


def cpu_now() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kw) -> tuple[float, float, object]:
    t0, c0 = time.monotonic(), cpu_now()
    value = fn(*args, **kw)
    return round(time.monotonic() - t0, 2), round(cpu_now() - c0, 2), value


def lorax_way_rootfs(tree: Path, dest: Path, size: int) -> None:
    """What lorax does for its runtime image: a loop-mounted filesystem filled with cp -a."""
    subprocess.run(["truncate", "-s", str(size), str(dest)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", "-m", "single", str(dest)], check=True)
    mnt = Path(tempfile.mkdtemp(prefix="bench-mnt-"))
    try:
        subprocess.run(["mount", "-o", "loop", str(dest), str(mnt)], check=True)
        try:
            subprocess.run(["cp", "-a", f"{tree}/.", str(mnt)], check=True)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        mnt.rmdir()


def iso_boot(iso: Path, firmware: str = "bios"):
    def boot(_kernel: object, _initrd: object, **kw: object) -> BootResult:
        return boot_iso(iso, firmware=firmware, **kw)

    return boot


def netboot_boot(tree: Path, bootfile: str = "pxelinux.0"):
    """A SeaBIOS network boot of a netboot tree (pxelinux.0 over qemu's TFTP, as the tests boot
    split trees); the caller serves what the guest fetches (verify.serve_netboot)."""

    def boot(_kernel: object, _initrd: object, **kw: object) -> BootResult:
        return boot_netboot(tree, bootfile, firmware="bios", **kw)

    return boot


def ram_floor(
    kernel: Path | None, initrd: Path | None, logdir: Path, *, timeout: float = THRASH_S, **kw: object
) -> dict[str, object]:
    """Both floors (verify.find_floors): usable (the marker within 1.5x the boot at 512 MB,
    searched from composer's budget when kw has it as guess_mb) and reached (the marker at all,
    within `timeout` a boot)."""
    logdir.mkdir(parents=True, exist_ok=True)
    f = find_floors(kernel, initrd, 128, 512, 16, log_dir=logdir, timeout=timeout, marker=BOOT_MARKER, **kw)
    for r in f.results:
        print(f"  boot {r.memory_mb} MB: {'ok' if r.ok else 'no'} ({r.seconds:.0f}s) {'' if r.ok else r.reason}", flush=True)
    return {"ram_floor_mb": f.usable_mb, "ram_reached_mb": f.reached_mb, "boot_512_s": round(f.reference_s, 1)}


def children_cpu() -> float:
    """User + system seconds of every child process waited for so far (a whole compose, its commands included)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


PARTS: dict[str, dict[str, object]] = {}


@contextlib.contextmanager
def part(name: str):
    """How long each part of the bench took, with the load average before and after it."""
    t0, l0 = time.monotonic(), load()
    print(f"bench: {name} ... (load {l0})", flush=True)
    yield
    PARTS[name] = {"wall_s": round(time.monotonic() - t0, 1), "load_before": l0, "load_after": load()}
    print(f"bench: {name} took {PARTS[name]['wall_s']} s (load {load()})", flush=True)


def run_composer(source: str, work: Path, out: Path, log: Path) -> dict[str, object]:
    """`composer runtime` as a user runs it (a new process), defaults, no tree cache."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    argv = [
        sys.executable,
        "-m",
        "composer",
        "--logfile",
        str(log),
        "runtime",
        "-p",
        "TestProduct",
        "-v",
        "1",
        "-s",
        source,
        "--nogpgcheck",
        "--cachedir",
        str(BUILD / "cache"),
        "--workdir",
        str(work),
        "--keep-workdir",
        "--no-cache",
        "--force",
        str(out),
    ]
    log.unlink(missing_ok=True)
    l0, t0, c0 = load(), time.monotonic(), children_cpu()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, cpu = round(time.monotonic() - t0, 2), round(children_cpu() - c0, 1)
    m = json.loads((out / "manifest.json").read_text())
    t = m["timings"]
    pair = t.get("dracut+squashfs", t.get("dracut", 0) + t.get("squashfs", 0))
    stages = {
        "install": t["install"],
        "postinstall": t["postinstall"],
        "cleanup": t["cleanup"],
        "rootfs.img": t.get("rootfs", 0.0),
        "dracut": t["dracut"],
        "squashfs": t["squashfs"],
        "dracut + runtime image": round(t.get("rootfs", 0.0) + pair, 2),
        "outputs": t["outputs"],
    }
    known = sum(stages[k] for k in ("install", "postinstall", "cleanup", "dracut + runtime image", "outputs"))
    stages["start, checks, other"] = round(wall - known, 2)
    initrd = next((out / "images/pxeboot").glob("initrd*.img"))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "load_before": l0,
        "load_after": load(),
        "stages": stages,
        "cpu": m["cpu"],
        "install_img_mib": round((out / "images/install.img").stat().st_size / MIB, 2),
        "initramfs_mib": round(next(v for k, v in m["sizes"].items() if k.startswith("initramfs-")) / MIB, 2),
        "big_initrd_mib": round(initrd.stat().st_size / MIB, 2),
    }


# lorax's own progress lines (pylorax/__init__.py), in the order it prints them.
LORAX_MARKS = {
    "install": "installing runtime packages",
    "postinstall": "doing post-install configuration",
    "backup": "backing up installroot",
    "modules": "generating kernel module metadata",
    "cleanup": "cleaning unneeded files",
    "image": "creating the runtime image",
    "prepare": "preparing to build output tree",
    "dracut": "rebuilding initramfs images",
    "outputs": "populating output tree and building boot images",
}


def clock_offset(logged: float, actual: float) -> float:
    """What to add to a log's times to put them on this process's clock: 0, or whole quarter
    hours when the logger's local time zone is not ours (lorax 46.0 logs inside a Debian root
    whose /etc/localtime need not be the host's). `logged` and `actual`: one moment, read from
    the log as local time and taken here."""
    skew = actual - logged
    return 0.0 if abs(skew) < 600 else round(skew / 900) * 900.0


def lorax_marks(logfile: Path) -> dict[str, float]:
    """The time (epoch seconds) of lorax's first line with each mark."""
    found: dict[str, float] = {}
    for line in logfile.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if not m:
            continue
        for key, text in LORAX_MARKS.items():
            if key not in found and text in line:
                found[key] = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def lorax_stages(logfile: Path, start: float, end: float, wall: float) -> dict[str, float]:
    """lorax's stage times from its log's marks (start, end: epoch seconds of the process).
    lorax 40.5.19 and 46.0 print the same marks ("%(asctime)s LEVEL[ name]: message")."""
    t = lorax_marks(logfile)
    missing = [k for k in LORAX_MARKS if k not in t]
    if missing:
        raise SystemExit(f"bench: {logfile}: no line for {', '.join(missing)}: not lorax's log?")
    shift = clock_offset(t["install"], start)  # lorax logs its first mark within seconds of its start
    t = {k: v + shift for k, v in t.items()}
    stages = {
        "install": round(t["postinstall"] - start, 2),  # start, dnf metadata and the transaction
        "postinstall": round(t["backup"] - t["postinstall"], 2),
        "cleanup": round(t["image"] - t["backup"], 2),  # backup (hard links), module data, cleanup, verify
        "rootfs.img": 0.0,  # lorax's default runtime is the tree in squashfs, no rootfs.img
        "dracut": round(t["outputs"] - t["dracut"], 2),
        "squashfs": round(t["prepare"] - t["image"], 2),
        "dracut + runtime image": round(t["outputs"] - t["image"], 2),  # squashfs, then dracut
        "outputs": round(end - t["outputs"], 2),
    }
    stages["start, checks, other"] = round(
        wall - sum(stages[k] for k in ("install", "postinstall", "cleanup", "dracut + runtime image", "outputs")), 2
    )
    return stages


class PeerFailed(Exception):
    """A lorax peer did not run to its end; the message says why in one line."""


def run_lorax(source: str, work: Path, out: Path, script: Path = LORAX) -> dict[str, object]:
    """A real lorax (40.5.19 by default; run-lorax46 for 46.0) with the test product's template set
    (see the peer's README); both take REPO_URL WORKDIR OUTDIR and log to WORKDIR.log/lorax.log."""
    if out.exists():
        shutil.rmtree(out)
    l0, start, t0, c0 = load(), time.time(), time.monotonic(), children_cpu()
    # cwd: lorax leaves a debugdata/ directory (dnf's solver data) wherever it runs.
    proc = subprocess.run(
        [str(script), source, str(work), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, cwd=OUT
    )
    wall, end, cpu = round(time.monotonic() - t0, 2), time.time(), round(children_cpu() - c0, 1)
    logfile = Path(f"{work}.log") / "lorax.log"
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise PeerFailed(f"{script.name} failed (exit {proc.returncode}; log {logfile}): {' | '.join(tail)}")
    try:
        stages = lorax_stages(logfile, start, end, wall)
        initrd = next((out / "images/pxeboot").glob("initrd*.img"))
        res = {
            "wall_s": wall,
            "cpu_s": cpu,
            "load_before": l0,
            "load_after": load(),
            "stages": stages,
            "install_img_mib": round((out / "images/install.img").stat().st_size / MIB, 2),
            "initramfs_mib": round(initrd.stat().st_size / MIB, 2),
        }
    except (SystemExit, OSError, StopIteration) as e:  # no log, a log without lorax's marks, no outputs
        raise PeerFailed(f"{script.name} ran, but {e or 'made no initrd'} (log {logfile}, outputs {out})") from None
    shutil.rmtree(out)
    shutil.rmtree(work, ignore_errors=True)
    return res


def flattened_links(root: Path) -> list[tuple[Path, str]]:
    """Files under root that a copy made of symbolic links: a short file holding only a relative
    path to another file under root (lorax 46.0's src/bin/lorax holds "../pylorax/cmdline/lorax.py").
    Returns (file, the path it held)."""
    found = []
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size <= 255):
        text = f.read_bytes()
        if not text or b"\n" in text or b"\0" in text or text.startswith(b"/") or b"/" not in text:
            continue
        target = (f.parent / text.decode(errors="replace")).resolve()
        if target.is_file() and target.is_relative_to(root.resolve()) and target != f.resolve():
            found.append((f, text.decode()))
    return found


def runnable_peer(script: Path, copy: Path) -> tuple[Path, int]:
    """script, or the same script in a copy of its directory (at `copy`) with the symbolic links a
    file copy flattened (flattened_links) made links again. Returns the script to run and the
    number of links restored."""
    links = flattened_links(script.parent)
    if not links:
        return script, 0
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(script.parent, copy, symlinks=True)
    for d in [copy, *(p for p in copy.rglob("*") if p.is_dir() and not p.is_symlink())]:
        d.chmod(0o755)  # the peers are read-only; the copy is ours to fix and to remove
    for f, target in links:
        mine = copy / f.relative_to(script.parent)
        mine.unlink()
        mine.symlink_to(target)
    return copy / script.name, len(links)


def prepare_lorax46(source: str) -> tuple[Path | None, str]:
    """(the run-lorax46 to run, a note) when lorax 46.0 can run here, else (None, why not).
    run-lorax46 builds its Debian unstable root on first use (mmdebstrap, network, 20-60 s):
    done here, untimed, with lorax's --help as the run."""
    if not LORAX46.exists():
        return None, f"{LORAX46} is missing (BENCH_LORAX46=PATH names its run-lorax46)"
    if os.geteuid() != 0:
        return None, "run-lorax46 needs root"
    script, restored = runnable_peer(LORAX46, BUILD / "peers" / LORAX46.parent.name)
    note = f"run from {script.parent}: {restored} symbolic links its copy had flattened made links again" if restored else ""
    work = OUT / "lorax46-prepare"
    proc = subprocess.run(
        [str(script), source, str(work), str(OUT / "lorax46-prepare-out"), "--help"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        cwd=OUT,
    )
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(Path(f"{work}.log"), ignore_errors=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-2:]
        return None, f"{script} could not start lorax (exit {proc.returncode}): {' | '.join(tail)}"
    return script, note


def rotation(tools: list[str], i: int) -> list[str]:
    """Who composes in which order in round i: each tool goes first in turn."""
    k = i % len(tools)
    return tools[k:] + tools[:k]


def median_run(runs: list[dict]) -> dict:
    """The run whose whole wall time is the median (lower median for an even count)."""
    walls = sorted(r["wall_s"] for r in runs)
    mid = walls[(len(walls) - 1) // 2]
    return next(r for r in runs if r["wall_s"] == mid)


def compose_rounds(source: str, runs: int, work: Path, outdir: Path, res: dict) -> None:
    """`runs` rounds of composer and each lorax peer that can run here, in rotating order; each
    tool's runs and its median run go into res (composer's last output stays in outdir, its work
    directory in work)."""
    with part("lorax 46.0: its Debian unstable root (untimed)"):
        lorax46, why = prepare_lorax46(source)
    if why:
        print(f"bench: lorax 46.0 {'not run: ' if lorax46 is None else ''}{why}", flush=True)
    res["lorax46_note"] = why
    scripts = {"lorax": LORAX, **({"lorax46": lorax46} if lorax46 else {})}
    tools = ["composer", *scripts]
    runs_of: dict[str, list[dict]] = {who: [] for who in tools}
    for i in range(runs):
        for who in rotation(tools, i):
            if who not in scripts and who != "composer":
                continue  # lorax 46.0 failed in an earlier round
            with part(f"{TOOLS[who]} compose #{i + 1}"):
                if who == "composer":
                    runs_of[who].append(run_composer(source, work, outdir, OUT / "composer.log"))
                    continue
                try:
                    runs_of[who].append(run_lorax(source, OUT / f"{who}-work", OUT / f"{who}-out", scripts[who]))
                except PeerFailed as e:
                    if who == "lorax":
                        raise SystemExit(f"bench: {e}") from None
                    print(f"bench: lorax 46.0 not run further: {e}", flush=True)
                    res["lorax46_note"] = str(e)
                    del scripts[who]
    for who, done in runs_of.items():
        res[f"{who}_runs"] = done
        if done:
            res[who] = median_run(done)


def media_floors(source: str, res: dict, ram_mode: str) -> dict[str, dict[str, object]]:
    """boot.iso (its size and compose time into res["boot_iso"]) and the two split netboot trees:
    each composed, its budget read, its floors bisected unless ram_mode is "0"; the rows of the RAM
    table (floors_table), in order."""
    floors: dict[str, dict[str, object]] = {}
    with part("boot.iso compose"):
        cfg = bench_config(source, OUT / "boot-iso")
        iso_wall, iso_cpu, _ = timed(compose_boot_iso, cfg, MediaOptions(volid="TestProduct-1-x86_64"))
        iso = cfg.outdir / "images/boot.iso"
        res["boot_iso"] = {
            "wall_s": iso_wall,
            "cpu_s": iso_cpu,
            "iso_mib": round(iso.stat().st_size / MIB, 1),
            "install_img_mib": round((cfg.outdir / "images/install.img").stat().st_size / MIB, 1),
        }
        res["compose"]["sizes_mib"]["boot.iso"] = res["boot_iso"]["iso_mib"]
        predicted = predicted_floor(None, None, iso)
        res["boot_iso"]["ram_predicted_mb"] = predicted[0] if predicted else None
        # The parts of the budget the small initrd carries (its memory check: that is the budget).
        pxe = cfg.outdir / "images/pxeboot"
        media = ram.predict("media", pxe / "vmlinuz", pxe / "initrd.img").as_dict()
    for firmware in ("bios", "uefi"):
        row = floors[f"boot.iso, {firmware.upper()} CD"] = floor_row(media, res["boot_iso"]["ram_predicted_mb"])
        if ram_mode != "0":
            with part(f"RAM floor, boot.iso ({firmware.upper()} CD, bisection)"):
                boot = iso_boot(iso, firmware)
                row |= ram_floor(None, None, OUT / f"boots-iso-{firmware}", boot=boot, guess_mb=row["budget_mb"])
    res["boot_iso"] |= {k: floors["boot.iso, BIOS CD"].get(k) for k in ("ram_floor_mb", "ram_reached_mb", "boot_512_s")}
    shutil.rmtree(cfg.outdir)
    for kind, label in (("netboot-split", "split netboot, livenet"), ("netboot-nbd", "split netboot, NBD")):
        with part(f"{label} compose"):
            tree = compose_split(source, OUT / kind, nbd=kind == "netboot-nbd")
            meta = json.loads((tree / "netboot.json").read_text())
            row = floors[label] = floor_row(next(iter(meta["ram"].values())))
        if ram_mode != "0":
            with part(f"RAM floor, {label} (BIOS PXE, bisection)"), serve_netboot(tree, meta):
                row |= ram_floor(None, None, OUT / f"boots-{kind}", boot=netboot_boot(tree), guess_mb=row["budget_mb"])
        shutil.rmtree(tree)
    return floors


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
    ram_mode = "0" if quick else os.environ.get("BENCH_RAM", "all")
    runs = max(1, int(os.environ.get("BENCH_RUNS", "1")))
    if not LORAX.exists():
        print(f"bench: the lorax baseline {LORAX} is missing (set BENCH_LORAX=PATH to its run-lorax)", file=sys.stderr)
        return 1
    t_all = time.monotonic()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    work = OUT / "work"
    res: dict[str, object] = {
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
        "quick": quick,
        "runs": runs,
        "load_at_start": load(),
    }

    with part("test product repository"):
        repo = build_testproduct(BUILD / "testproduct")
    source = f"file://{repo}"

    # 1. composer and the lorax peers on the same repository, back to back (rotating who goes first).
    outdir = OUT / "runtime"
    compose_rounds(source, runs, work, outdir, res)
    composer = res["composer"]
    manifest = json.loads((outdir / "manifest.json").read_text())
    res["compose"] = {"wall_s": composer["wall_s"], "sizes_mib": {k: round(v / MIB, 1) for k, v in manifest["sizes"].items()}}
    kept = next(work.glob(KEPT_PREFIX + "*"))  # the last composer run's
    tree = kept / "tree"
    kernel = outdir / "images/pxeboot/vmlinuz"
    initramfs = next((kept / "initramfs").glob("initramfs-*.img"))
    # The RAM budget composer predicted at build time (manifest), and the initramfs it is made of.
    res["ram_predicted_mb"] = next(iter(manifest["ram"].values()))["floor_mb"]
    res["initramfs"] = {
        "packed_mib": round(initramfs.stat().st_size / MIB, 1),
        "unpacked_mib": round(unpacked_ram(initramfs) / MIB, 1),
    }

    # 2. The limit: a dnf install of the packages the compose installed, plus one mksquashfs pass over
    # the tree it shipped.
    with part("limit (dnf install + one mksquashfs pass)"):
        # As many times as the composes (dnf's time alone varies by seconds run to run): the medians.
        dnf_s: list[float] = []
        squash_s: list[float] = []
        for _ in range(runs):
            limit_tree = OUT / "limit" / "tree"
            session = DnfSession(
                limit_tree,
                DnfConfig(
                    releasever="1", arch=os.uname().machine, sources=(source,), cachedir=BUILD / "cache" / "dnf", nogpgcheck=True
                ),
                OUT / "limit",
            )
            t0 = time.monotonic()
            # The packages the compose installed, by name (its manifest lists name-epoch:version-release.arch).
            session.install([nevra.rsplit("-", 2)[0] for nevra in manifest["packages"]], required=True)
            session.run_transaction()
            dnf_s.append(time.monotonic() - t0)
            dnf_tree_mib = round(tree_size(limit_tree).blocks_bytes / MIB, 1)
            shutil.rmtree(OUT / "limit")
            # (Over the uncleaned dnf tree mksquashfs would compress 2.3x the data and flatter the compose.)
            squash_s.append(timed(make_squashfs, tree, OUT / "limit.img", Compression.XZ)[0])
            (OUT / "limit.img").unlink()
        t_dnf, t_sq = sorted(dnf_s)[(runs - 1) // 2], sorted(squash_s)[(runs - 1) // 2]
        limit = t_dnf + t_sq
        res["physical_limit"] = {
            "dnf_install_s": round(t_dnf, 2),
            "mksquashfs_xz_s": t_sq,
            "dnf_install_runs_s": [round(x, 2) for x in dnf_s],
            "mksquashfs_runs_s": squash_s,
            "dnf_tree_mib": dnf_tree_mib,
            "squashed_tree_mib": round(tree_size(tree).blocks_bytes / MIB, 1),
            "total_s": round(limit, 2),
            "compose_vs_limit": round(composer["wall_s"] / limit, 2),
        }

    # 3. boot.iso and the split netboot trees from the same repository and options (each its own
    # compose); their sizes, budgets and RAM floors (section 6).
    floors = {} if quick else media_floors(source, res, ram_mode)

    # 4. rootfs stage: ours (mkfs --rootdir, no loop, no mount) vs the lorax way.
    with part("rootfs.img: composer vs the lorax way"):
        ours = OUT / "rootfs-ours.img"
        t_ours, c_ours, _ = timed(make_rootfs, tree, ours, RootfsType.BTRFS, free=None)
        lorax_img = OUT / "rootfs-lorax.img"
        t_lorax, c_lorax, _ = timed(lorax_way_rootfs, tree, lorax_img, ours.stat().st_size)
        res["rootfs_stage"] = {
            "ours": {
                "wall_s": t_ours,
                "cpu_s": c_ours,
                "apparent_mib": round(ours.stat().st_size / MIB, 1),
                "allocated_mib": round(allocated_size(ours) / MIB, 1),
                "loop_devices": 0,
                "mounts": 0,
            },
            "lorax_way": {
                "wall_s": t_lorax,
                "cpu_s": c_lorax,
                "apparent_mib": round(lorax_img.stat().st_size / MIB, 1),
                "allocated_mib": round(allocated_size(lorax_img) / MIB, 1),
                "loop_devices": 1,
                "mounts": 1,
            },
            "speedup": round(t_lorax / t_ours, 2) if t_ours else None,
        }
        lorax_img.unlink()

    # 5. Compressors over the same LiveOS/rootfs.img.
    squash_src = kept / "squashfs-root"
    comp: dict[str, dict[str, object]] = {}
    for c in () if quick else (Compression.XZ, Compression.ZSTD, Compression.LZ4):
        with part(f"mksquashfs {c}"):
            img = OUT / f"squashfs-{c}.img"
            t, cp, _ = timed(make_squashfs, squash_src, img, c)
            big = OUT / f"initrd-{c}.img"
            make_big_initrd(initramfs, img, runtime_cmdline(RootfsType.BTRFS), big)
            entry: dict[str, object] = {
                "wall_s": t,
                "cpu_s": cp,
                "squashfs_mib": round(img.stat().st_size / MIB, 1),
                "big_initrd_mib": round(big.stat().st_size / MIB, 1),
            }
        if ram_mode == "all" or ram_mode == str(c):
            with part(f"RAM floor, big initrd {c} (bisection)"):
                guess = predicted_floor(kernel, big)
                entry |= ram_floor(kernel, big, OUT / f"boots-{c}", check_args=CHECK_ARGS, guess_mb=guess[0] if guess else None)
        comp[str(c)] = entry
        img.unlink()
    if comp:
        xz = comp["xz"]
        for c in ("zstd", "lz4"):
            comp[c]["time_vs_xz"] = round(comp[c]["wall_s"] / xz["wall_s"], 2)
            comp[c]["size_vs_xz"] = round(comp[c]["squashfs_mib"] / xz["squashfs_mib"], 2)
    res["compression"] = comp

    # 6. RAM, every output kind in one table: the big initrd as shipped (the default build, xz; its
    # floor bisected with the compressors above) first.
    for key in ("ram_floor_mb", "ram_reached_mb", "boot_512_s"):
        res[key] = comp.get("xz", {}).get(key)
    big = floor_row(next(iter(manifest["ram"].values())))
    big |= {k: res[k] for k in ("ram_floor_mb", "ram_reached_mb", "boot_512_s") if res[k] is not None}
    res["floors"] = {"big initrd": big, **floors}
    shutil.rmtree(work)
    res["parts"] = PARTS
    res["bench_wall_s"] = round(time.monotonic() - t_all, 1)
    res["load_at_end"] = load()

    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "floors.md").write_text("\n".join(floors_table(res["floors"], quick=quick)) + "\n")
    md = table(res)
    (OUT / "results.md").write_text(md)
    print(md)
    return 0


def bench_config(source: str, outdir: Path) -> Config:
    """The test product with composer's defaults, no tree cache: the compose of each output kind."""
    return Config(
        product="TestProduct",
        version="1",
        outdir=outdir,
        sources=(source,),
        nogpgcheck=True,
        cachedir=BUILD / "cache",
        workdir=outdir.with_name(outdir.name + "-work"),
        force=True,
        use_cache=False,
    )


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on the loopback (all held until all are found)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def compose_split(source: str, out: Path, *, nbd: bool) -> Path:
    """A split netboot tree (small initrd + install.img) whose guest reaches its server at
    10.0.2.2 (qemu's user network: this host's loopback): livenet downloads install.img over HTTP,
    or with nbd the initramfs reads it on demand from nbd-server."""
    cfg = bench_config(source, out)
    http_port, nbd_port = free_ports(2)
    server = parse_nbd(f"10.0.2.2:{nbd_port}", cfg.product, cfg.version) if nbd else None
    compose_netboot(cfg, NetbootOptions(url=f"http://10.0.2.2:{http_port}/", split=True, nbd=server))
    return out


def floor_row(budget: dict, budget_mb: int | None = None) -> dict[str, object]:
    """A row of the RAM table: composer's budget (budget_mb when the output carries its own, e.g.
    boot.iso's memory check) and its parts (outputs/ram.py's RamBudget, as manifest.json and
    netboot.json record it); the bisected floors are added to it."""
    return {
        "budget": budget,
        "budget_mb": budget_mb or budget["floor_mb"],
        "stop_mb": budget.get("stop_mb"),
        "limit_mb": budget.get("limit_mb"),
    }


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a > 0.05 and b > 0.05 else "n/a"


# The ratio composer/peer each lorax is to reach (issue 23: half the current lorax's time).
TARGETS = {"lorax": 0.8, "lorax46": 0.5}


def compose_table(r: dict) -> list[str]:
    """The compose rounds: each stage of the median run of composer and of each lorax peer that ran,
    the ratio composer/peer, and the outputs' sizes."""
    comp = r["composer"]
    peers = [p for p in ("lorax", "lorax46") if r.get(p)]
    runs = ", ".join(f"{TOOLS[w]} {[x['wall_s'] for x in r[f'{w}_runs']]} s" for w in ("composer", *peers))
    lines = [
        f"Load average (1/5/15 min) at start {r['load_at_start']}, at end {r['load_at_end']}; "
        f"{r['machine']['cores']} cores. Runs: {runs}; the median run of each below.",
    ]
    if r.get("lorax46_note"):
        lines.append(f"lorax 46.0: {r['lorax46_note']}")
    lines += [
        "",
        "| stage (wall s) | composer | " + " | ".join(f"{TOOLS[p]} | composer/{TOOLS[p].split()[-1]}" for p in peers) + " |",
        "|---|---:|" + "---:|---:|" * len(peers),
    ]
    for name, cs in comp["stages"].items():
        cells = [f"{r[p]['stages'][name]} | {ratio(cs, r[p]['stages'][name])}" for p in peers]
        lines.append(f"| {name} | {cs} | " + " | ".join(cells) + " |")
    whole = [f"**{r[p]['wall_s']}** | **{ratio(comp['wall_s'], r[p]['wall_s'])}** (target <= {TARGETS[p]})" for p in peers]
    lines.append(f"| **whole (process wall)** | **{comp['wall_s']}** | " + " | ".join(whole) + " |")
    if all("cpu_s" in x for x in (comp, *(r[p] for p in peers))):
        # getrusage never sees processes reaped inside a PID namespace: composer's dracut and chrooted
        # commands run under `bwrap --unshare-pid`, lorax's under chroot. Not a like-for-like figure.
        cpu = [f"{r[p]['cpu_s']} | (lower bound) {ratio(comp['cpu_s'], r[p]['cpu_s'])}" for p in peers]
        lines.append(
            "| whole, CPU s (user+sys; composer's misses what ran under bwrap --unshare-pid, e.g. "
            f"dracut) | {comp['cpu_s']} | " + " | ".join(cpu) + " |"
        )
    lines += [
        "",
        "(composer's dracut and squashfs run side by side: their row `dracut + runtime image` is the wall "
        "time of rootfs.img plus the overlapped pair; lorax's runs squashfs, then dracut. lorax's `cleanup` "
        "includes its hard-link backup of the tree, module data and verify; its `install` the process start "
        "and dnf's metadata load. lorax 46.0 runs inside a Debian unstable root: its mksquashfs is that "
        "root's squashfs-tools, its dracut the install tree's, as 40.5.19's.)",
        "",
        "| output MiB | composer | " + " | ".join(TOOLS[p] for p in peers) + " |",
        "|---|---:|" + "---:|" * len(peers),
        f"| install.img | {comp['install_img_mib']} | " + " | ".join(str(r[p]["install_img_mib"]) for p in peers) + " |",
        f"| initramfs (dracut) | {comp['initramfs_mib']} | " + " | ".join(str(r[p]["initramfs_mib"]) for p in peers) + " |",
        f"| big initrd (initramfs + squashfs) | {comp['big_initrd_mib']} | " + " | ".join("n/a" for _ in peers) + " |",
    ]
    return lines


def pct_off(measured: object, predicted: object) -> str:
    """predicted against measured, in percent of measured."""
    if isinstance(measured, int) and isinstance(predicted, int) and measured:
        return f"{100 * (predicted - measured) / measured:+.0f}%"
    return "n/a"


def parts_text(budget: dict) -> str:
    """What the physical limit is made of (MiB, as outputs/ram.py counts them): the initrd as
    loaded, its files unpacked, install.img when downloaded into RAM; the rest of the limit is the
    kernel (its bzImage init_size) and the page structs."""
    parts = [f"initrd {budget['initrd_mb']:.0f}", f"unpacked {budget['unpacked_mb']:.0f}"]
    if budget.get("squashfs_mb"):
        parts.append(f"install.img {budget['squashfs_mb']:.0f}")
    if budget.get("limit_mb") is not None:
        rest = budget["limit_mb"] - budget["initrd_mb"] - budget["unpacked_mb"] - budget.get("squashfs_mb", 0)
        parts.append(f"kernel + page structs {rest:.0f}")
    return " + ".join(parts)


def floors_table(rows: dict[str, dict], *, quick: bool = False) -> list[str]:
    """One table of the RAM of every output kind: the two bisected floors (verify.find_floors),
    composer's predicted budget and the physical limit (outputs/ram.py: the parts, no allowance)."""
    lines = [
        "| output (RAM, MB; 16 MB steps) | usable floor | boot at 512 MB s | thrashing floor (marker at all) | "
        "predicted stop | predicted budget | budget vs usable | physical limit (no allowance) | usable - limit | "
        "the limit's parts (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        usable, limit = row.get("ram_floor_mb"), row.get("limit_mb")
        over = usable - limit if isinstance(usable, int) and isinstance(limit, int) else "n/a"
        lines.append(
            f"| {name} | {usable or 'n/a'} | {row.get('boot_512_s') or 'n/a'} | {row.get('ram_reached_mb') or 'n/a'} | "
            f"{row.get('stop_mb') or 'n/a'} | {row['budget_mb']} | {pct_off(usable, row['budget_mb'])} | "
            f"{limit if limit is not None else 'n/a'} | {over} | {parts_text(row['budget'])} |"
        )
    note = (
        "(usable: the least RAM whose boot reaches the marker within 1.5x its time at 512 MB; below it the page "
        "cache thrashes. Predicted stop: below it a split initrd stops with one line, so a menu-driven boot's "
        "thrashing floor is found no lower than it. boot.iso under SeaBIOS and OVMF; the split trees over "
        "pxelinux.0, install.img from this host's loopback: downloaded into RAM by livenet, or read on demand over NBD."
        + (" BENCH_QUICK=1: boot.iso and netboot not composed, no boots." if quick else "")
        + ")"
    )
    return [*lines, "", note]


def table(r: dict) -> str:
    lines = compose_table(r)
    comp = r["composer"]
    pl = r["physical_limit"]
    each = f" (medians of dnf {pl['dnf_install_runs_s']}, mksquashfs {pl['mksquashfs_runs_s']})" if r["runs"] > 1 else ""
    lines += [
        "",
        f"Limit: dnf install {pl['dnf_install_s']} s + one mksquashfs pass (composer's xz settings) over "
        f"the shipped tree ({pl['squashed_tree_mib']} MiB) {pl['mksquashfs_xz_s']} s = {pl['total_s']} s{each}; "
        f"composer's compose {comp['wall_s']} s = **{pl['compose_vs_limit']}x** the limit (target <= 1.1).",
        "",
    ]
    rf = r["rootfs_stage"]
    lines += [
        "| rootfs.img stage | wall s | CPU s | loop devices | mounts |",
        "|---|---:|---:|---:|---:|",
        f"| composer (mkfs.btrfs --rootdir) | {rf['ours']['wall_s']} | {rf['ours']['cpu_s']} | 0 | 0 |",
        f"| lorax way (loop mount + cp -a) | {rf['lorax_way']['wall_s']} | {rf['lorax_way']['cpu_s']} | 1 | 1 |",
        f"| ratio lorax/composer | {rf['speedup']} | | | |",
    ]
    lines += [
        "",
        "| compressor | mksquashfs s | CPU s | squashfs MiB | big initrd MiB | usable RAM floor MB | time vs xz | size vs xz |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in r["compression"].items():
        lines.append(
            f"| {name} | {e['wall_s']} | {e['cpu_s']} | {e['squashfs_mib']} | {e['big_initrd_mib']} | "
            f"{e.get('ram_floor_mb', 'n/a')} | {e.get('time_vs_xz', 1.0)} | {e.get('size_vs_xz', 1.0)} |"
        )

    bi = r.get("boot_iso", {})
    if bi:
        lines += ["", f"boot.iso: {bi['iso_mib']} MiB (install.img {bi['install_img_mib']} MiB), composed in {bi['wall_s']} s."]
    ini = r["initramfs"]
    lines += ["", f"initramfs: {ini['packed_mib']} MiB packed, {ini['unpacked_mib']} MiB in RAM once unpacked.", ""]
    lines += floors_table(r["floors"], quick=r["quick"])
    if r["quick"]:
        lines.append("(BENCH_QUICK=1: no boot.iso, no compressor comparison, no qemu boots.)")
    lines += ["", "| bench part | wall s | load before | load after |", "|---|---:|---|---|"]
    lines += [f"| {k} | {v['wall_s']} | {v['load_before']} | {v['load_after']} |" for k, v in r["parts"].items()]
    lines += [f"| **all** | {r['bench_wall_s']} | | |", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
