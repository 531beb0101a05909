"""bench/bench.py's pure parts: the rotation of the compose rounds, lorax's stage stamps (40.5.19's
and 46.0's log formats), the peer copy with its flattened links restored, the RAM table."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402

# lorax's marks, seconds after the first: installing .. populating (the last line ends the run).
MARKS = [
    (0.0, "installing runtime packages"),
    (9.5, "doing post-install configuration"),
    (10.0, "backing up installroot"),
    (10.2, "generating kernel module metadata"),
    (11.0, "cleaning unneeded files"),
    (12.5, "creating the runtime image"),
    (55.0, "preparing to build output tree and boot images"),
    (55.5, "rebuilding initramfs images"),
    (83.0, "populating output tree and building boot images"),
]


def write_log(path: Path, first: datetime.datetime, fmt: str) -> None:
    lines = ["Lorax v46.0 (console noise without a time stamp)"]
    for dt, text in MARKS:
        stamp = (first + datetime.timedelta(seconds=dt)).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        lines.append(fmt.format(stamp=stamp, text=text))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "fmt",
    [
        "{stamp} INFO: {text}",  # lorax 40.5.19's lorax.log
        "{stamp} INFO pylorax: {text}",  # lorax 46.0's: %(asctime)s %(levelname)s %(name)s: %(message)s
    ],
)
@pytest.mark.parametrize("zone_hours", [0, -5, 2])
def test_lorax_stages_from_either_log_format_and_any_time_zone(tmp_path, fmt, zone_hours):
    """The stages come out the same whatever zone the log's local time is in (lorax 46.0 logs in a
    Debian root whose /etc/localtime is its own)."""
    start = datetime.datetime(2026, 12, 7, 9, 15, 0)
    log = tmp_path / "lorax.log"
    write_log(log, start + datetime.timedelta(seconds=2, hours=zone_hours), fmt)
    t0 = start.timestamp()
    stages = bench.lorax_stages(log, t0, t0 + 86.0, 86.0)
    assert stages["install"] == 11.5  # from the process start: 2 s of start-up, then 9.5
    assert stages["postinstall"] == 0.5
    assert stages["cleanup"] == 2.5
    assert stages["squashfs"] == 42.5 and stages["dracut"] == 27.5
    assert stages["dracut + runtime image"] == 70.5
    assert stages["outputs"] == 1.0  # the last mark at 2 + 83 s, the process ended at 86
    assert stages["start, checks, other"] == 0.0


def test_clock_offset_is_whole_quarter_hours_or_nothing():
    assert bench.clock_offset(1000.0, 1003.5) == 0.0  # the same clock: lorax's start-up
    assert bench.clock_offset(1000.0, 1000.0 + 3600 + 4) == 3600.0
    assert bench.clock_offset(1000.0 + 19800, 1002.0) == -19800.0  # UTC+5:30
    assert bench.clock_offset(1000.0, 1000.0 + 540) == 0.0  # minutes late is not a time zone


def test_lorax_stages_wants_every_mark(tmp_path):
    log = tmp_path / "lorax.log"
    log.write_text("2026-12-07 09:15:00,000 INFO pylorax: installing runtime packages\n")
    with pytest.raises(SystemExit, match="no line for postinstall"):
        bench.lorax_stages(log, 0.0, 1.0, 1.0)


def test_rotation_puts_each_tool_first_in_turn():
    tools = ["composer", "lorax", "lorax46"]
    assert [bench.rotation(tools, i) for i in range(4)] == [
        ["composer", "lorax", "lorax46"],
        ["lorax", "lorax46", "composer"],
        ["lorax46", "composer", "lorax"],
        ["composer", "lorax", "lorax46"],
    ]
    assert [bench.rotation(["composer", "lorax"], i) for i in range(2)] == [["composer", "lorax"], ["lorax", "composer"]]


def test_runnable_peer_restores_links_a_copy_flattened(tmp_path):
    peer = tmp_path / "lorax-46.0"
    (peer / "src/bin").mkdir(parents=True)
    (peer / "src/pylorax/cmdline").mkdir(parents=True)
    (peer / "src/pylorax/cmdline/lorax.py").write_text("print('lorax')\n")
    (peer / "src/bin/lorax").write_text("../pylorax/cmdline/lorax.py")  # a link, flattened
    (peer / "src/bin/empty").write_text("")
    (peer / "lorax.conf").write_text("[lorax]\n")
    (peer / "notes").write_text("see/nothing")  # a path to no file: a file
    script = peer / "run-lorax46"
    script.write_text("#!/bin/sh\n")
    assert bench.flattened_links(peer) == [(peer / "src/bin/lorax", "../pylorax/cmdline/lorax.py")]
    for d in (peer / "src/bin", peer / "src", peer):
        d.chmod(0o555)  # the peers are read-only
    try:
        run, restored = bench.runnable_peer(script, tmp_path / "copy")
    finally:
        for d in (peer, peer / "src", peer / "src/bin"):
            d.chmod(0o755)
    assert restored == 1 and run == tmp_path / "copy/run-lorax46"
    link = tmp_path / "copy/src/bin/lorax"
    assert link.is_symlink() and link.read_text() == "print('lorax')\n"
    assert (peer / "src/bin/lorax").read_text() == "../pylorax/cmdline/lorax.py"  # the peer untouched
    # A peer without flattened links runs as it is.
    (peer / "src/bin/lorax").unlink()
    assert bench.runnable_peer(script, tmp_path / "copy2") == (script, 0)
    assert not (tmp_path / "copy2").exists()


def test_floors_table_one_row_per_output_with_its_limit(tmp_path):
    from composer.outputs import ram

    big = {"kind": "big-initrd", "kernel_mb": 55.6, "initrd_mb": 60.1, "unpacked_mb": 80.3, "squashfs_mb": 0.0}
    big |= {"allowance_mb": 16.0, "floor_mb": 216, "limit_mb": ram.machine_mb(52.2 + 60.1 + 80.3)}
    split = {"kind": "netboot-split", "kernel_mb": 54.6, "initrd_mb": 8.6, "unpacked_mb": 21.4, "squashfs_mb": 51.8}
    split |= {"allowance_mb": 56.0, "floor_mb": 196, "limit_mb": 139, "stop_mb": 180}
    rows = {
        "big initrd": bench.floor_row(big) | {"ram_floor_mb": 224, "ram_reached_mb": 208, "boot_512_s": 52.4},
        "split netboot, livenet": bench.floor_row(split),  # composed, not booted
        "boot.iso, BIOS CD": bench.floor_row(split | {"kind": "media", "squashfs_mb": 0.0}, 153),
    }
    lines = bench.floors_table(rows)
    assert lines[0].startswith("| output (RAM, MB; 16 MB steps) | usable floor |")
    assert lines[2] == (
        "| big initrd | 224 | 52.4 | 208 | n/a | 216 | -4% | 196 | 28 | initrd 60 + unpacked 80 + kernel + page structs 56 |"
    )
    assert lines[3] == (
        "| split netboot, livenet | n/a | n/a | n/a | 180 | 196 | n/a | 139 | n/a | "
        "initrd 9 + unpacked 21 + install.img 52 + kernel + page structs 57 |"
    )
    assert "| boot.iso, BIOS CD | n/a | n/a | n/a | 180 | 153 |" in lines[4]
    assert "BENCH_QUICK" not in lines[-1] and "BENCH_QUICK" in bench.floors_table(rows, quick=True)[-1]


def test_floor_row_of_a_budget_without_a_limit():
    """A manifest.json written before the limit was recorded: the table says n/a."""
    old = {"kind": "media", "kernel_mb": 54.0, "initrd_mb": 8.6, "unpacked_mb": 21.4, "squashfs_mb": 0.0, "floor_mb": 144}
    row = bench.floor_row(old)
    assert row["limit_mb"] is None and row["budget_mb"] == 144
    assert "| n/a | 144 | n/a | n/a | n/a | initrd 9 + unpacked 21 |" in bench.floors_table({"boot.iso": row})[2]


def run(wall: float, stages: dict[str, float], **more: float) -> dict:
    return {"wall_s": wall, "cpu_s": wall, "stages": stages, "install_img_mib": 51.8, "initramfs_mib": 8.6} | more


def test_compose_table_beside_both_lorax_peers_or_one():
    stages = {"install": 8.0, "dracut": 10.0}
    r = {
        "load_at_start": "1.0",
        "load_at_end": "1.0",
        "machine": {"cores": 2},
        "composer": run(40.0, stages, big_initrd_mib=60.4),
        "lorax": run(82.0, {"install": 9.0, "dracut": 27.0}),
        "lorax46": run(68.0, {"install": 10.0, "dracut": 25.0}),
        "lorax46_note": "",
    }
    r |= {f"{w}_runs": [r[w]] for w in ("composer", "lorax", "lorax46")}
    lines = bench.compose_table(r)
    assert "Runs: composer [40.0] s, lorax 40.5.19 [82.0] s, lorax 46.0 [68.0] s" in lines[0]
    assert "| stage (wall s) | composer | lorax 40.5.19 | composer/40.5.19 | lorax 46.0 | composer/46.0 |" in lines
    assert "| dracut | 10.0 | 27.0 | 0.37 | 25.0 | 0.40 |" in lines
    whole = "| **whole (process wall)** | **40.0** | **82.0** | **0.49** (target <= 0.8) | **68.0** | **0.59** (target <= 0.5) |"
    assert whole in lines
    # lorax 46.0 could not run: one line says why, the table has 40.5.19 alone
    del r["lorax46"]
    r["lorax46_runs"], r["lorax46_note"] = [], "run-lorax46 needs root"
    lines = bench.compose_table(r)
    assert lines[1] == "lorax 46.0: run-lorax46 needs root"
    assert "| dracut | 10.0 | 27.0 | 0.37 |" in lines


FAKE_LORAX = """#!/bin/sh
# run-lorax's interface: REPO_URL WORKDIR OUTDIR; logs to WORKDIR.log/lorax.log
mkdir -p "$2" "$2.log" "$3/images/pxeboot"
[ "$FAKE" = fail ] && { echo "Traceback: no libdnf5" >&2; exit 1; }
now=$(date '+%Y-%m-%d %H:%M:%S,000')
for m in "installing runtime packages" "doing post-install configuration" "backing up installroot" \\
    "generating kernel module metadata" "cleaning unneeded files" "creating the runtime image" \\
    "preparing to build output tree and boot images" "rebuilding initramfs images" \\
    "populating output tree and building boot images"; do
  [ "$FAKE" = nolog ] || echo "$now INFO pylorax: $m" >> "$2.log/lorax.log"
done
head -c 1048576 /dev/zero > "$3/images/install.img"
head -c 524288 /dev/zero > "$3/images/pxeboot/initrd.img"
"""


@pytest.mark.parametrize("fake", ["ok", "fail", "nolog"])
def test_run_lorax_a_run_or_one_line_why_not(tmp_path, monkeypatch, fake):
    script = tmp_path / "run-lorax46"
    script.write_text(FAKE_LORAX)
    script.chmod(0o755)
    monkeypatch.setattr(bench, "OUT", tmp_path)
    monkeypatch.setenv("FAKE", fake)
    if fake == "ok":
        res = bench.run_lorax("file:///repo", tmp_path / "work", tmp_path / "out", script)
        assert res["install_img_mib"] == 1.0 and res["initramfs_mib"] == 0.5
        assert list(res["stages"]) == [
            *("install", "postinstall", "cleanup", "rootfs.img", "dracut", "squashfs", "dracut + runtime image", "outputs"),
            "start, checks, other",
        ]  # composer's stages, row for row
        assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
        return
    with pytest.raises(bench.PeerFailed) as e:
        bench.run_lorax("file:///repo", tmp_path / "work", tmp_path / "out", script)
    assert "\n" not in str(e.value)
    why = str(e.value)
    assert ("exit 1" in why and "no libdnf5" in why) if fake == "fail" else why.startswith("run-lorax46 ran, but ")


@pytest.mark.parametrize("fails_in", [None, 0, 1])
def test_compose_rounds_rotate_and_go_on_without_lorax46(tmp_path, monkeypatch, fails_in):
    """Three rounds in rotating order; a lorax 46.0 run that fails leaves one line and the rounds
    go on with composer and 40.5.19 (a failing 40.5.19 stops the bench)."""
    order: list[str] = []
    monkeypatch.setattr(bench, "OUT", tmp_path)
    monkeypatch.setattr(bench, "prepare_lorax46", lambda source: (tmp_path / "run-lorax46", ""))

    def composer(source, work, outdir, log):
        order.append("composer")
        return run(40.0 + len(order), {})

    def lorax(source, work, out, script):
        who = "lorax46" if script.name == "run-lorax46" else "lorax"
        order.append(who)
        if who == "lorax46" and fails_in is not None and sum(o == who for o in order) > fails_in:
            raise bench.PeerFailed("run-lorax46 failed (exit 1; log x): no libdnf5")
        return run(60.0 + len(order), {})

    monkeypatch.setattr(bench, "run_composer", composer)
    monkeypatch.setattr(bench, "run_lorax", lorax)
    res: dict = {}
    bench.compose_rounds("file:///repo", 3, tmp_path / "work", tmp_path / "runtime", res)
    if fails_in is None:
        assert order == ["composer", "lorax", "lorax46", "lorax", "lorax46", "composer", "lorax46", "composer", "lorax"]
        assert len(res["lorax46_runs"]) == 3 and res["lorax46"]["wall_s"] == 65.0 and res["lorax46_note"] == ""
    else:
        assert order.count("lorax46") == fails_in + 1  # not tried again after it failed
        assert len(res["composer_runs"]) == len(res["lorax_runs"]) == 3 and len(res["lorax46_runs"]) == fails_in
        assert res["lorax46_note"] == "run-lorax46 failed (exit 1; log x): no libdnf5"
        assert ("lorax46" in res) == (fails_in > 0)
    assert res["composer"]["wall_s"] in [r["wall_s"] for r in res["composer_runs"]]
