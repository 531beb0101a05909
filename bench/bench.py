"""`make bench`: compose the test product and measure it against baselines taken in the same run.

Prints Markdown tables and writes build/bench/results.json and build/bench/results.md.
Baselines (same machine, same repository, same run):
  - the real lorax 40.5.19 (../shared/peers/lorax-40.5.19/run-lorax) beside `composer runtime`
    with its defaults (xz, btrfs, --no-cache), both as command lines, back to back: stage by
    stage, the ratio composer/lorax, install.img sizes;
  - the limit: one dnf install of the same packages plus one mksquashfs pass (composer's
    default settings) over the tree the compose shipped;
  - the rootfs-image stage against the lorax way (mkfs on a sparse file, loop mount, cp -a, umount);
  - xz against zstd and lz4: time, size and the RAM floor of the big initrd each one gives.
Environment: BENCH_RUNS=N composes each tool N times, alternating which goes first (default 1;
the tables show the median); BENCH_QUICK=1 skips boot.iso, the compressor comparison and every
qemu boot (RAM floors);
BENCH_RAM=all (default) bisects the RAM floor for every compressor, xz only for the default
build, 0 for none. The floors of the big initrd and boot.iso are printed beside composer's
predicted budgets. The load average is recorded with every part (the machine may be shared).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import resource
import shutil
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
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.ram import unpacked_ram
from composer.pipelines.bootiso import MediaOptions, compose_boot_iso
from composer.pipelines.runtime import KEPT_PREFIX
from composer.verify import BootResult, boot_iso, find_floors, predicted_floor
from testproduct import BOOT_MARKER, CHECK_ARGS, build_testproduct

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BUILD", ROOT / "build"))
OUT = BUILD / "bench"
# ../shared beside the checkout (a worktree one level deeper finds it one more level up).
_PEER = "shared/peers/lorax-40.5.19/run-lorax"
LORAX = Path(
    os.environ.get("BENCH_LORAX")
    or next((str(d / _PEER) for d in (ROOT.parent, ROOT.parent.parent) if (d / _PEER).exists()), str(ROOT.parent / _PEER))
)
MIB = 2**20


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


def iso_boot(iso: Path):
    def boot(_kernel: object, _initrd: object, **kw: object) -> BootResult:
        return boot_iso(iso, firmware="bios", **kw)

    return boot


def ram_floor(kernel: Path | None, initrd: Path | None, logdir: Path, **kw: object) -> dict[str, object]:
    """Both floors (verify.find_floors): usable (the marker within 1.5x the boot at 512 MB)
    and reached (the marker at all)."""
    logdir.mkdir(parents=True, exist_ok=True)
    f = find_floors(kernel, initrd, 128, 512, 16, log_dir=logdir, timeout=900, marker=BOOT_MARKER, **kw)
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
    """lorax's stage times from its log's marks (start, end: epoch seconds of the process)."""
    t = lorax_marks(logfile)
    missing = [k for k in LORAX_MARKS if k not in t]
    if missing:
        raise SystemExit(f"bench: {logfile}: no line for {', '.join(missing)}: not lorax 40's log?")
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


def run_lorax(source: str, work: Path, out: Path) -> dict[str, object]:
    """The real lorax 40.5.19 with the test product's template set (see its README)."""
    if out.exists():
        shutil.rmtree(out)
    l0, start, t0, c0 = load(), time.time(), time.monotonic(), children_cpu()
    # cwd: lorax leaves a debugdata/ directory (dnf's solver data) wherever it runs.
    proc = subprocess.run(
        [str(LORAX), source, str(work), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, cwd=OUT
    )
    wall, end, cpu = round(time.monotonic() - t0, 2), time.time(), round(children_cpu() - c0, 1)
    logfile = Path(f"{work}.log") / "lorax.log"
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"bench: lorax failed (exit {proc.returncode}; log {logfile}): {' | '.join(tail)}")
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
    shutil.rmtree(out)
    shutil.rmtree(work, ignore_errors=True)
    return res


def median_run(runs: list[dict]) -> dict:
    """The run whose whole wall time is the median (lower median for an even count)."""
    walls = sorted(r["wall_s"] for r in runs)
    mid = walls[(len(walls) - 1) // 2]
    return next(r for r in runs if r["wall_s"] == mid)


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

    # 1. composer and lorax on the same repository, back to back (alternating who goes first).
    comp_runs: list[dict] = []
    lorax_runs: list[dict] = []
    outdir = OUT / "runtime"
    for i in range(runs):
        order = ("composer", "lorax") if i % 2 == 0 else ("lorax", "composer")
        for who in order:
            with part(f"{who} compose #{i + 1}"):
                if who == "composer":
                    comp_runs.append(run_composer(source, work, outdir, OUT / "composer.log"))
                else:
                    lorax_runs.append(run_lorax(source, OUT / "lorax-work", OUT / "lorax-out"))
    res["composer_runs"], res["lorax_runs"] = comp_runs, lorax_runs
    composer, lorax = median_run(comp_runs), median_run(lorax_runs)
    res["composer"], res["lorax"] = composer, lorax
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

    # 3. boot.iso from the same repository and options (its own compose: the ISO carries the small
    # initrd and install.img); its size, and its RAM floor as a CD under SeaBIOS.
    if not quick:
        with part("boot.iso compose"):
            cfg = Config(
                product="TestProduct",
                version="1",
                outdir=OUT / "boot-iso",
                sources=(source,),
                nogpgcheck=True,
                cachedir=BUILD / "cache",
                workdir=OUT / "iso-work",
                force=True,
                use_cache=False,
            )
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
        if ram_mode != "0":
            with part("RAM floor, boot.iso (BIOS CD, bisection)"):
                res["boot_iso"] |= ram_floor(None, None, OUT / "boots-iso", boot=iso_boot(iso))
        shutil.rmtree(cfg.outdir)

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
                entry |= ram_floor(kernel, big, OUT / f"boots-{c}", check_args=CHECK_ARGS)
        comp[str(c)] = entry
        img.unlink()
    if comp:
        xz = comp["xz"]
        for c in ("zstd", "lz4"):
            comp[c]["time_vs_xz"] = round(comp[c]["wall_s"] / xz["wall_s"], 2)
            comp[c]["size_vs_xz"] = round(comp[c]["squashfs_mib"] / xz["squashfs_mib"], 2)
    res["compression"] = comp

    # The big initrd as shipped: RAM floor of the default build.
    for key in ("ram_floor_mb", "ram_reached_mb", "boot_512_s"):
        res[key] = comp.get("xz", {}).get(key)
    shutil.rmtree(work)
    res["parts"] = PARTS
    res["bench_wall_s"] = round(time.monotonic() - t_all, 1)
    res["load_at_end"] = load()

    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = table(res)
    (OUT / "results.md").write_text(md)
    print(md)
    return 0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a > 0.05 and b > 0.05 else "n/a"


def table(r: dict) -> str:
    comp, lor = r["composer"], r["lorax"]
    n = len(r["composer_runs"])
    lines = [
        f"Load average (1/5/15 min) at start {r['load_at_start']}, at end {r['load_at_end']}; "
        f"{r['machine']['cores']} cores. composer {n} run(s) {[x['wall_s'] for x in r['composer_runs']]} s, "
        f"lorax {[x['wall_s'] for x in r['lorax_runs']]} s; the median run of each below.",
        "",
        "| stage (wall s) | composer | lorax 40.5.19 | composer/lorax |",
        "|---|---:|---:|---:|",
    ]
    for name, cs in comp["stages"].items():
        ls = lor["stages"][name]
        lines.append(f"| {name} | {cs} | {ls} | {ratio(cs, ls)} |")
    lines.append(
        f"| **whole (process wall)** | **{comp['wall_s']}** | **{lor['wall_s']}** | "
        f"**{ratio(comp['wall_s'], lor['wall_s'])}** (target <= 0.8) |"
    )
    if "cpu_s" in comp and "cpu_s" in lor:
        # getrusage never sees processes reaped inside a PID namespace: composer's dracut and chrooted
        # commands run under `bwrap --unshare-pid`, lorax's under chroot. Not a like-for-like figure.
        lines.append(
            f"| whole, CPU s (user+sys; composer's misses what ran under bwrap --unshare-pid, e.g. "
            f"dracut) | {comp['cpu_s']} | {lor['cpu_s']} | (lower bound) {ratio(comp['cpu_s'], lor['cpu_s'])} |"
        )
    lines += [
        "",
        "(composer's dracut and squashfs run side by side: their row `dracut + runtime image` is the wall "
        "time of rootfs.img plus the overlapped pair; lorax's runs squashfs, then dracut. lorax's `cleanup` "
        "includes its hard-link backup of the tree, module data and verify; its `install` the process start "
        "and dnf's metadata load.)",
        "",
        "| output MiB | composer | lorax |",
        "|---|---:|---:|",
        f"| install.img | {comp['install_img_mib']} | {lor['install_img_mib']} |",
        f"| initramfs (dracut) | {comp['initramfs_mib']} | {lor['initramfs_mib']} |",
        f"| big initrd (initramfs + squashfs) | {comp['big_initrd_mib']} | n/a |",
    ]
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

    def vs(measured: object, predicted: object) -> str:
        if isinstance(measured, int) and isinstance(predicted, int):
            return f"{100 * (predicted - measured) / measured:+.0f}%"
        return "n/a"

    bi = r.get("boot_iso", {})
    if bi:
        lines += ["", f"boot.iso: {bi['iso_mib']} MiB (install.img {bi['install_img_mib']} MiB), composed in {bi['wall_s']} s."]
    ini = r["initramfs"]
    lines += [
        "",
        f"initramfs: {ini['packed_mib']} MiB packed, {ini['unpacked_mib']} MiB in RAM once unpacked.",
        "",
        "| RAM floor (16 MB steps) | usable MB (marker within 1.5x the boot at 512 MB) | boot at 512 MB s "
        "| reached MB (marker at all) | predicted MB (composer's budget) | predicted vs usable |",
        "|---|---:|---:|---:|---:|---:|",
        (
            f"| big initrd | {r.get('ram_floor_mb') or 'n/a'} | {r.get('boot_512_s') or 'n/a'} | "
            f"{r.get('ram_reached_mb') or 'n/a'} | {r['ram_predicted_mb']} | {vs(r.get('ram_floor_mb'), r['ram_predicted_mb'])} |"
        ),
        (
            f"| boot.iso (BIOS CD) | {bi.get('ram_floor_mb', 'n/a')} | {bi.get('boot_512_s', 'n/a')} | "
            f"{bi.get('ram_reached_mb', 'n/a')} | {bi.get('ram_predicted_mb', 'n/a')} | "
            f"{vs(bi.get('ram_floor_mb'), bi.get('ram_predicted_mb'))} |"
        ),
    ]
    if r["quick"]:
        lines.append("(BENCH_QUICK=1: no boot.iso, no compressor comparison, no qemu boots.)")
    lines += ["", "| bench part | wall s | load before | load after |", "|---|---:|---|---|"]
    lines += [f"| {k} | {v['wall_s']} | {v['load_before']} | {v['load_after']} |" for k, v in r["parts"].items()]
    lines += [f"| **all** | {r['bench_wall_s']} | | |", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
