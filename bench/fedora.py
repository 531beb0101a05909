"""`make bench`, second part: the Fedora-shaped product with lorax's STOCK templates.

`composer lorax` against the real lorax 40.5.19 (scripts/lorax-oracle, its stock
share/templates.d/99-generic unchanged), the same argv (Pungi's, as the oracle runs it), back to
back in the same run, alternating who goes first: stage by stage, the sizes of what each made,
the limit (one dnf install of the same packages plus one mksquashfs pass over the tree composer
shipped), and with BENCH_RAM other than 0 the RAM floors of both boot.isos (BIOS CD, the stock
menus' default entry, bisected as verify.find_floors does). Each stage's growth from the small
test product is read from build/bench/results.json when the first part of `make bench` wrote it
in the same run. composer builds with an empty cache each time (a first build: the tree is
installed and stored, as on a Koji builder that never saw the package set).
Writes build/bench/fedora.json and build/bench/fedora.md. Needs root (lorax does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import BUILD, MIB, OUT, ROOT, children_cpu, iso_boot, load, lorax_stages, median_run, part, ram_floor

from composer.config import Compression
from composer.dnf import DnfConfig, DnfSession
from composer.images.rootfs import tree_size
from composer.images.squashfs import make_squashfs
from composer.verify import predicted_floor
from testproduct.fedoraproduct import build_fedoraproduct

FOUT = OUT / "fedora"
ARGV = [
    *("-p", "Fedora", "-v", "43", "-r", "43"),
    *("--buildarch", "x86_64", "--isfinal", "--nomacboot", "--noupgrade", "--volid", "Fedora-43-x86_64"),
]
PEER = next(
    (d / "shared/peers/lorax-40.5.19" for d in (ROOT.parent, ROOT.parent.parent) if (d / "shared/peers/lorax-40.5.19").is_dir()),
    ROOT.parent / "shared/peers/lorax-40.5.19",
)
STAGES = ("install", "postinstall", "cleanup", "dracut + runtime image", "outputs")
_STAMP = re.compile(r"^\[\s*([\d.]+)s\] (.*)$")


def composer_stages(log: Path, wall: float) -> dict[str, float]:
    """Stage times from composer's log lines (`[  12.3s] install ...`, `install: done in 47.6s`)."""
    at: dict[str, float] = {}
    done: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        for key, prefix in (("install", "install ..."), ("postinstall", "postinstall ..."), ("snapshot", "snapshot ...")):
            if text.startswith(prefix):
                at.setdefault(key, t)
        if text.startswith("tree after cleanup"):
            at.setdefault("packed from", t)
        if text.startswith(("dracut: done in", "squashfs: squashfs.img")):
            at["packed"] = max(at.get("packed", 0.0), t)
        if d := re.match(r"(\w+): done in ([\d.]+)s", text):
            done[d.group(1)] = float(d.group(2))
        if c := re.match(r"install: tree cached as \S+ \(\d+ MiB in ([\d.]+)s\)", text):
            done["tree cache store"] = float(c.group(1))
        if s := re.match(r"squashfs: \S+ [\d.]+ MiB \(\w+\), ([\d.]+)s beside", text):
            done["squashfs"] = float(s.group(1))
    stages = {
        "install": round(at["postinstall"] - at["install"], 2),
        "postinstall": round(at["snapshot"] - at["postinstall"], 2),
        "cleanup": round(at["packed from"] - at["snapshot"], 2),  # snapshot, module-info, cleanup
        "dracut + runtime image": round(at["packed"] - at["packed from"], 2),
        "outputs": round(wall - at["packed"], 2),
    }
    stages["start, checks, other"] = round(wall - sum(stages.values()), 2)
    for key in ("tree cache store", "dracut", "squashfs"):
        stages[f"  of which {key}"] = done.get(key, 0.0)
    return stages


def run_composer(repo: Path, base: Path) -> dict[str, object]:
    """`composer lorax` with the stock templates, as Pungi would run lorax, a fresh cache."""
    shutil.rmtree(base, ignore_errors=True)
    (base / "logs").mkdir(parents=True)
    argv = [sys.executable, "-m", "composer", "lorax", *ARGV, "-s", f"file://{repo}"]
    argv += ["--sharedir", str(PEER / "share/templates.d/99-generic"), "--cachedir", str(base / "cache")]
    argv += ["--logfile", str(base / "logs/lorax.log"), str(base / "out")]
    l0, t0, c0 = load(), time.monotonic(), children_cpu()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = round(time.monotonic() - t0, 2)
    res = {"wall_s": wall, "cpu_s": round(children_cpu() - c0, 1), "load_before": l0, "load_after": load()}
    res["stages"] = composer_stages(base / "logs/lorax.log", wall)
    res |= sizes(base / "out")
    shutil.rmtree(base / "cache")
    return res


def run_lorax(repo: Path, base: Path) -> dict[str, object]:
    """The real lorax 40.5.19 through scripts/lorax-oracle (its host wrappers), no boots."""
    l0, start, t0, c0 = load(), time.time(), time.monotonic(), children_cpu()
    subprocess.run(
        [str(ROOT / "scripts/lorax-oracle"), str(repo), str(base)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "ORACLE_BOOT": "0", "LORAX_PEER": str(PEER)},
        cwd=FOUT,  # lorax leaves debugdata/ wherever it runs
    )
    wall, end = round(time.monotonic() - t0, 2), time.time()
    shutil.rmtree(base / "work", ignore_errors=True)  # lorax keeps its work directory (GBs)
    every = lorax_stages(base / "logs/lorax.log", start, end, wall)
    stages = {k: every[k] for k in (*STAGES, "start, checks, other")}
    stages["  of which tree cache store"] = 0.0
    stages["  of which dracut"], stages["  of which squashfs"] = every["dracut"], every["squashfs"]
    res = {"wall_s": wall, "cpu_s": round(children_cpu() - c0, 1), "load_before": l0, "load_after": load(), "stages": stages}
    return res | sizes(base / "out")


def sizes(out: Path) -> dict[str, object]:
    return {
        "boot_iso_mib": round((out / "images/boot.iso").stat().st_size / MIB, 1),
        "install_img_mib": round((out / "images/install.img").stat().st_size / MIB, 1),
        "initrd_mib": round((out / "images/pxeboot/initrd.img").stat().st_size / MIB, 1),
    }


def limit(repo: Path, composer_out: Path, packages: list[str]) -> dict[str, object]:
    """One dnf install of the packages composer installed, plus one mksquashfs pass (composer's
    settings) over the tree it shipped (install.img unpacked, not timed)."""
    work = FOUT / "limit"
    shutil.rmtree(work, ignore_errors=True)
    session = DnfSession(
        work / "tree",
        DnfConfig(releasever="43", arch="x86_64", sources=(f"file://{repo}",), cachedir=work / "cache", nogpgcheck=True),
        work,
    )
    t0 = time.monotonic()
    session.install(packages, required=True)
    session.run_transaction()
    dnf_s = round(time.monotonic() - t0, 2)
    shipped = work / "shipped"
    subprocess.run(["unsquashfs", "-q", "-d", str(shipped), str(composer_out / "images/install.img")], check=True)
    t0 = time.monotonic()
    make_squashfs(shipped, work / "again.img", Compression.XZ)
    sq_s = round(time.monotonic() - t0, 2)
    res = {"dnf_install_s": dnf_s, "mksquashfs_xz_s": sq_s, "total_s": round(dnf_s + sq_s, 2)}
    res["shipped_tree_mib"] = round(tree_size(shipped).blocks_bytes / MIB, 1)
    shutil.rmtree(work)
    return res


def floors(out: Path, name: str) -> dict[str, object]:
    iso = out / "images/boot.iso"
    pred = predicted_floor(None, None, iso)
    res = ram_floor(None, None, FOUT / f"boots-{name}", boot=iso_boot(iso), guess_mb=pred[0] if pred else None)
    return res | {"ram_predicted_mb": pred[0] if pred else None}


def main() -> int:
    if os.geteuid() != 0:
        print("bench/fedora.py: the real lorax needs root", file=sys.stderr)
        return 1
    if not (PEER / "share/templates.d/99-generic/x86.tmpl").is_file():
        print(f"bench/fedora.py: lorax's stock templates are not at {PEER}", file=sys.stderr)
        return 1
    t_all = time.monotonic()
    shutil.rmtree(FOUT, ignore_errors=True)
    FOUT.mkdir(parents=True)
    res: dict[str, object] = {"load_at_start": load(), "cores": os.cpu_count()}
    with part("Fedora-shaped product repository"):
        repo = build_fedoraproduct(BUILD / "fedoraproduct")
    runs = max(1, int(os.environ.get("BENCH_RUNS", "1")))
    comp: list[dict] = []
    lor: list[dict] = []
    for i in range(runs):
        for who in ("composer", "lorax") if i % 2 == 0 else ("lorax", "composer"):
            with part(f"Fedora-shaped: {who} lorax #{i + 1}"):
                if who == "composer":
                    comp.append(run_composer(repo, FOUT / "composer"))
                else:
                    lor.append(run_lorax(repo, FOUT / "lorax"))
    res["composer_runs"], res["lorax_runs"] = comp, lor
    res["composer"], res["lorax"] = median_run(comp), median_run(lor)
    # Side by side (tools/lorax_compare.py): every difference between the two outputs.
    cmp = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/lorax_compare.py"),
            str(FOUT / "lorax/out"),
            str(FOUT / "composer/out"),
            "--limit",
            "8",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    res["side_by_side"] = cmp.stdout + cmp.stderr[-2000:]
    packages = sorted(p.name for p in (FOUT / "composer/logs/pkglists").iterdir())
    with part("Fedora-shaped: limit (dnf install + one mksquashfs pass)"):
        res["limit"] = limit(repo, FOUT / "composer/out", packages)
    res["packages"] = len(packages)
    small = OUT / "results.json"
    if small.is_file():
        res["small"] = json.loads(small.read_text())
    write(res, t_all)  # the builds' figures stand even if the long boots below are cut short
    if os.environ.get("BENCH_RAM", "all") != "0" and os.environ.get("BENCH_QUICK", "0") in ("", "0"):
        for who in ("composer", "lorax"):
            with part(f"Fedora-shaped: RAM floor of {who}'s boot.iso (BIOS CD, bisection)"):
                res[who]["ram"] = floors(FOUT / who / "out", who)
            write(res, t_all)
    print(table(res))
    return 0


def write(res: dict, t_all: float) -> None:
    res["bench_wall_s"] = round(time.monotonic() - t_all, 1)
    res["load_at_end"] = load()
    (FOUT.parent / "fedora.json").write_text(json.dumps(res, indent=2) + "\n")
    (FOUT.parent / "fedora.md").write_text(table(res))


def table(r: dict) -> str:
    c, lo, lim = r["composer"], r["lorax"], r["limit"]
    small = r.get("small")
    lines = [
        f"Fedora-shaped product, lorax's stock 99-generic, Pungi's argv; {r['packages']} packages; "
        f"load {r['load_at_start']} at start, {r['load_at_end']} at end; {r['cores']} cores. composer runs "
        f"{[x['wall_s'] for x in r['composer_runs']]} s, lorax {[x['wall_s'] for x in r['lorax_runs']]} s.",
        "",
        "| stage (wall s) | composer lorax | lorax 40.5.19 | composer/lorax |"
        + (" small product: composer | growth (Fedora/small) |" if small else ""),
        "|---|---:|---:|---:|" + ("---:|---:|" if small else ""),
    ]
    for name, cs in c["stages"].items():
        ls = lo["stages"].get(name, 0.0)
        row = f"| {name} | {cs} | {ls} | {cs / ls:.2f} |" if ls > 0.05 else f"| {name} | {cs} | {ls} | n/a |"
        if small:
            ss = small["composer"]["stages"].get(name.strip().removeprefix("of which "), None)
            row += f" {ss if ss is not None else 'n/a'} | {cs / ss:.1f}x |" if ss and ss > 0.05 else " n/a | n/a |"
        lines.append(row)
    lines.append(
        f"| **whole** | **{c['wall_s']}** | **{lo['wall_s']}** | **{c['wall_s'] / lo['wall_s']:.2f}** (target <= 0.5) |"
        + (f" {small['composer']['wall_s']} | {c['wall_s'] / small['composer']['wall_s']:.1f}x |" if small else "")
    )
    lines += [
        "",
        f"Limit: dnf install {lim['dnf_install_s']} s + one mksquashfs pass over the shipped tree "
        f"({lim['shipped_tree_mib']} MiB) {lim['mksquashfs_xz_s']} s = {lim['total_s']} s; composer = "
        f"**{c['wall_s'] / lim['total_s']:.2f}x** the limit (target <= 1.1).",
        "",
        "| output MiB | composer | lorax |",
        "|---|---:|---:|",
    ]
    for key in ("boot_iso_mib", "install_img_mib", "initrd_mib"):
        lines.append(f"| {key.removesuffix('_mib').replace('_', '.')} | {c[key]} | {lo[key]} |")
    if "ram" in c:
        lines += ["", "| boot.iso RAM floor (BIOS CD) | usable MB | boot at 512 MB s | reached MB | predicted MB |"]
        lines.append("|---|---:|---:|---:|---:|")
        for who, x in (("composer", c), ("lorax 40.5.19", lo)):
            f = x["ram"]
            lines.append(
                f"| {who} | {f['ram_floor_mb']} | {f['boot_512_s']} | {f['ram_reached_mb']} | {f['ram_predicted_mb'] or 'n/a'} |"
            )
    lines += ["", "Side by side (tools/lorax_compare.py LORAX_OUT COMPOSER_OUT):", "", "```", r["side_by_side"].rstrip(), "```"]
    lines += ["", f"All of this part: {r['bench_wall_s']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
