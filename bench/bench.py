"""`make bench`: compose the test product and measure it against baselines taken in the same run.

Prints a Markdown table and writes build/bench/results.json and build/bench/results.md.
Baselines (same machine, same tree, same run):
  - the rootfs-image stage against the lorax way (mkfs on a sparse file, loop mount, cp -a, umount);
  - xz against zstd and lz4: time, size and the RAM floor of the big initrd each one gives;
  - the whole compose against the tools' physical limit: a bare dnf install of the same
    packages plus one mksquashfs pass over that tree.
BENCH_RAM=all (default) bisects the RAM floor for every compressor, BENCH_RAM=xz only for
the default build, BENCH_RAM=0 for none (the slow part: several qemu boots each). The
floors of the big initrd and boot.iso are printed beside composer's predicted budgets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from composer.bootiso import MediaOptions, compose_boot_iso
from composer.config import Compression, Config, RootfsType
from composer.dnf import DnfConfig, DnfSession
from composer.images.rootfs import make_rootfs, tree_size
from composer.images.sparse import allocated_size
from composer.images.squashfs import make_squashfs
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.ram import unpacked_ram
from composer.runtime import KEPT_PREFIX, compose_runtime
from composer.verify import BootResult, boot_iso, find_min_memory, predicted_floor
from testproduct import BOOT_MARKER, CHECK_ARGS, build_testproduct

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BUILD", ROOT / "build"))
OUT = BUILD / "bench"
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


def ram_floor(kernel: Path | None, initrd: Path | None, logdir: Path, **kw: object) -> int | None:
    logdir.mkdir(parents=True, exist_ok=True)
    best, results = find_min_memory(kernel, initrd, 128, 512, 16, log_dir=logdir, timeout=900, marker=BOOT_MARKER, **kw)
    for r in results:
        print(f"  boot {r.memory_mb} MB: {'ok' if r.ok else 'no'} ({r.seconds:.0f}s) {'' if r.ok else r.reason}", flush=True)
    return best


def main() -> int:
    ram_mode = os.environ.get("BENCH_RAM", "all")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    work = OUT / "work"
    res: dict[str, object] = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release}}

    repo = build_testproduct(BUILD / "testproduct")
    source = f"file://{repo}"

    # 1. The whole compose, as users run it (xz, btrfs).
    cfg = Config(product="TestProduct", version="1", outdir=OUT / "runtime", sources=(source,), nogpgcheck=True,
                 cachedir=BUILD / "cache", workdir=work, keep_workdir=True, force=True,
                 use_cache=False)  # a cold build: the tree cache would skip the dnf install
    wall, cpu, _ = timed(compose_runtime, cfg)
    manifest = json.loads((cfg.outdir / "manifest.json").read_text())
    res["compose"] = {"wall_s": wall, "cpu_s": cpu, "stages": {
        name: {"wall_s": manifest["timings"][name], "cpu_s": manifest["cpu"].get(name),
               "peak_child_rss_mib": manifest["peak_rss_mib"].get(name)} for name in manifest["timings"]},
        "sizes_mib": {k: round(v / MIB, 1) for k, v in manifest["sizes"].items()}}
    kept = next(work.glob(KEPT_PREFIX + "*"))
    tree = kept / "tree"
    kernel = cfg.outdir / "images/pxeboot/vmlinuz"
    initramfs = next((kept / "initramfs").glob("initramfs-*.img"))
    # The RAM budget composer predicted at build time (manifest), and the initramfs it is made of.
    res["ram_predicted_mb"] = next(iter(manifest["ram"].values()))["floor_mb"]
    res["initramfs"] = {"packed_mib": round(initramfs.stat().st_size / MIB, 1),
                        "unpacked_mib": round(unpacked_ram(initramfs) / MIB, 1)}

    # 1b. boot.iso from the same repository and options (its own compose: the ISO carries the small
    # initrd and install.img); its size, and its RAM floor as a CD under SeaBIOS.
    iso_cfg = dataclasses.replace(cfg, outdir=OUT / "boot-iso", keep_workdir=False)
    iso_wall, iso_cpu, _ = timed(compose_boot_iso, iso_cfg, MediaOptions(volid="TestProduct-1-x86_64"))
    iso = iso_cfg.outdir / "images/boot.iso"
    res["boot_iso"] = {"wall_s": iso_wall, "cpu_s": iso_cpu, "iso_mib": round(iso.stat().st_size / MIB, 1),
                       "install_img_mib": round((iso_cfg.outdir / "images/install.img").stat().st_size / MIB, 1)}
    res["compose"]["sizes_mib"]["boot.iso"] = res["boot_iso"]["iso_mib"]
    predicted = predicted_floor(None, None, iso)
    res["boot_iso"]["ram_predicted_mb"] = predicted[0] if predicted else None
    if ram_mode != "0":
        print("RAM floor, boot.iso (BIOS CD):", flush=True)
        res["boot_iso"]["ram_floor_mb"] = ram_floor(None, None, OUT / "boots-iso", boot=iso_boot(iso))
    shutil.rmtree(iso_cfg.outdir)

    # 2. rootfs stage: ours (mkfs --rootdir, no loop, no mount) vs the lorax way.
    ours = OUT / "rootfs-ours.img"
    t_ours, c_ours, _ = timed(make_rootfs, tree, ours, RootfsType.BTRFS, free=None)
    lorax = OUT / "rootfs-lorax.img"
    t_lorax, c_lorax, _ = timed(lorax_way_rootfs, tree, lorax, ours.stat().st_size)
    res["rootfs_stage"] = {
        "ours": {"wall_s": t_ours, "cpu_s": c_ours, "apparent_mib": round(ours.stat().st_size / MIB, 1),
                 "allocated_mib": round(allocated_size(ours) / MIB, 1), "loop_devices": 0, "mounts": 0},
        "lorax_way": {"wall_s": t_lorax, "cpu_s": c_lorax, "apparent_mib": round(lorax.stat().st_size / MIB, 1),
                      "allocated_mib": round(allocated_size(lorax) / MIB, 1), "loop_devices": 1, "mounts": 1},
        "speedup": round(t_lorax / t_ours, 2) if t_ours else None,
    }
    lorax.unlink()

    # 3. Compressors over the same LiveOS/rootfs.img.
    squash_src = kept / "squashfs-root"
    comp: dict[str, dict[str, object]] = {}
    for c in (Compression.XZ, Compression.ZSTD, Compression.LZ4):
        img = OUT / f"squashfs-{c}.img"
        t, cp, _ = timed(make_squashfs, squash_src, img, c)
        big = OUT / f"initrd-{c}.img"
        make_big_initrd(initramfs, img, runtime_cmdline(RootfsType.BTRFS), big)
        entry: dict[str, object] = {"wall_s": t, "cpu_s": cp, "squashfs_mib": round(img.stat().st_size / MIB, 1),
                                    "big_initrd_mib": round(big.stat().st_size / MIB, 1)}
        if ram_mode == "all" or ram_mode == str(c):
            print(f"RAM floor, {c}:", flush=True)
            entry["ram_floor_mb"] = ram_floor(kernel, big, OUT / f"boots-{c}", check_args=CHECK_ARGS)
        comp[str(c)] = entry
        img.unlink()
    xz = comp["xz"]
    for c in ("zstd", "lz4"):
        comp[c]["time_vs_xz"] = round(comp[c]["wall_s"] / xz["wall_s"], 2)
        comp[c]["size_vs_xz"] = round(comp[c]["squashfs_mib"] / xz["squashfs_mib"], 2)
    res["compression"] = comp

    # 4. The physical limit: the dnf install alone plus one mksquashfs pass over that tree.
    from testproduct import RUNTIME_PACKAGES

    limit_tree = OUT / "limit" / "tree"
    session = DnfSession(limit_tree, DnfConfig(releasever="1", arch=os.uname().machine, sources=(source,),
                                               cachedir=BUILD / "cache" / "dnf", nogpgcheck=True), OUT / "limit")
    t0 = time.monotonic()
    session.install(list(RUNTIME_PACKAGES), required=True)
    session.run_transaction()
    t_dnf = time.monotonic() - t0
    # One mksquashfs pass over the tree the compose shipped (cleaned): what any tool must at least do.
    # (Over the uncleaned dnf tree it would compress 2.3x the data and flatter the compose.)
    t_sq, _, _ = timed(make_squashfs, tree, OUT / "limit.img", Compression.XZ)
    limit = t_dnf + t_sq
    res["physical_limit"] = {"dnf_install_s": round(t_dnf, 2), "mksquashfs_xz_s": t_sq,
                             "dnf_tree_mib": round(tree_size(limit_tree).blocks_bytes / MIB, 1),
                             "squashed_tree_mib": round(tree_size(tree).blocks_bytes / MIB, 1), "total_s": round(limit, 2),
                             "compose_vs_limit": round(wall / limit, 2)}
    shutil.rmtree(OUT / "limit")
    (OUT / "limit.img").unlink()

    # The big initrd as shipped: RAM floor of the default build.
    res["ram_floor_mb"] = comp["xz"].get("ram_floor_mb")
    shutil.rmtree(work)

    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = table(res)
    (OUT / "results.md").write_text(md)
    print(md)
    return 0


def table(r: dict) -> str:
    c = r["compose"]
    lines = ["| stage | wall s | CPU s | peak child RSS MiB |", "|---|---:|---:|---:|"]
    for name, s in c["stages"].items():
        lines.append(f"| {name} | {s['wall_s']} | {s['cpu_s']} | {s['peak_child_rss_mib']} |")
    lines.append(f"| **whole compose** | {c['wall_s']} | {c['cpu_s']} | |")
    lines += ["", "| output | MiB |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in c["sizes_mib"].items()]
    rf = r["rootfs_stage"]
    lines += ["", "| rootfs.img stage | wall s | CPU s | loop devices | mounts |", "|---|---:|---:|---:|---:|",
              f"| composer (mkfs.btrfs --rootdir) | {rf['ours']['wall_s']} | {rf['ours']['cpu_s']} | 0 | 0 |",
              f"| lorax way (loop mount + cp -a) | {rf['lorax_way']['wall_s']} | {rf['lorax_way']['cpu_s']} | 1 | 1 |",
              f"| ratio lorax/composer | {rf['speedup']} | | | |"]
    lines += ["", "| compressor | mksquashfs s | squashfs MiB | big initrd MiB | RAM floor MB | time vs xz | size vs xz |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in r["compression"].items():
        lines.append(f"| {name} | {e['wall_s']} | {e['squashfs_mib']} | {e['big_initrd_mib']} | "
                     f"{e.get('ram_floor_mb', 'n/a')} | {e.get('time_vs_xz', 1.0)} | {e.get('size_vs_xz', 1.0)} |")
    bi = r["boot_iso"]
    lines += ["", f"boot.iso: {bi['iso_mib']} MiB (install.img {bi['install_img_mib']} MiB), composed in {bi['wall_s']} s; "
              f"RAM floor as a BIOS CD: {bi.get('ram_floor_mb', 'n/a')} MB."]

    def vs(measured: object, predicted: object) -> str:
        if isinstance(measured, int) and isinstance(predicted, int):
            return f"{100 * (predicted - measured) / measured:+.0f}%"
        return "n/a"

    ini = r["initramfs"]
    lines += ["", f"initramfs: {ini['packed_mib']} MiB packed, {ini['unpacked_mib']} MiB in RAM once unpacked.", "",
              "| RAM floor | measured MB (bisected, 16 MB steps) | predicted MB (composer's budget) | predicted vs measured |",
              "|---|---:|---:|---:|",
              (f"| big initrd | {r.get('ram_floor_mb', 'n/a')} | {r['ram_predicted_mb']} | "
               f"{vs(r.get('ram_floor_mb'), r['ram_predicted_mb'])} |"),
              (f"| boot.iso (BIOS CD) | {bi.get('ram_floor_mb', 'n/a')} | {bi.get('ram_predicted_mb', 'n/a')} | "
               f"{vs(bi.get('ram_floor_mb'), bi.get('ram_predicted_mb'))} |")]
    pl = r["physical_limit"]
    lines += ["", f"Physical limit (dnf install {pl['dnf_install_s']} s + one mksquashfs xz pass {pl['mksquashfs_xz_s']} s "
              f"= {pl['total_s']} s); whole compose {c['wall_s']} s = **{pl['compose_vs_limit']}x** the limit.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
