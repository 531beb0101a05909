"""`make soak`: every rebuild of boot.iso boots.

Rebuilds the test product's boot.iso SOAK_N times (default 10), each with a different
SOURCE_DATE_EPOCH and --no-cache (a cold build each time), and boots every one as a CD
under SeaBIOS and under OVMF at SOAK_MEMORY MB (default 512). Prints k/N per firmware
and the first failing serial log. Not part of CI: it is long (a compose and two TCG boots
per round) and is meant to be run on an otherwise idle machine. Runs the CLI, as a user does.
Writes build/soak/results.json; serial logs stay in build/soak/logs/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BUILD", ROOT / "build"))
OUT = BUILD / "soak"
FIRMWARES = ("bios", "uefi")
EPOCH0 = 1_700_000_000  # round i builds with EPOCH0 + i * 86_400 + i


def composer(*args: str, log: Path) -> subprocess.CompletedProcess[str]:
    with log.open("w") as f:
        return subprocess.run(
            [sys.executable, "-m", "composer", *args], stdout=f, stderr=subprocess.STDOUT, text=True, check=False
        )


def main() -> int:
    n = int(os.environ.get("SOAK_N", "10"))
    memory = os.environ.get("SOAK_MEMORY", "512")
    if n < 1:
        print("soak: error: SOAK_N must be at least 1", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "tools"))
    from testproduct import build_testproduct

    repo = build_testproduct(BUILD / "testproduct")
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "logs").mkdir(parents=True)
    ok = {fw: 0 for fw in FIRMWARES}
    rounds: list[dict[str, object]] = []
    first_failure: Path | None = None
    t_all = time.monotonic()
    for i in range(n):
        epoch = EPOCH0 + i * 86_400 + i
        iso_dir = OUT / "iso"
        t0 = time.monotonic()
        build = composer(
            "--logfile",
            str(OUT / "logs" / f"compose-{i + 1}.log"),
            "boot-iso",
            "--product",
            "TestProduct",
            "--version",
            "1",
            "--source",
            f"file://{repo}",
            "--nogpgcheck",
            "--no-cache",
            "--cachedir",
            str(BUILD / "cache"),
            "--workdir",
            str(OUT / "work"),
            "--source-date-epoch",
            str(epoch),
            "--force",
            str(iso_dir),
            log=OUT / "logs" / f"compose-{i + 1}.out",
        )
        rnd: dict[str, object] = {
            "round": i + 1,
            "epoch": epoch,
            "compose_s": round(time.monotonic() - t0, 1),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        if build.returncode != 0:
            rnd["compose"] = "failed"
            print(f"soak {i + 1}/{n}: epoch {epoch}: compose FAILED (see {OUT / 'logs' / f'compose-{i + 1}.out'})", flush=True)
            first_failure = first_failure or OUT / "logs" / f"compose-{i + 1}.out"
            rounds.append(rnd)
            continue
        iso = iso_dir / "images" / "boot.iso"
        rnd["iso_sha256"] = subprocess.run(["sha256sum", str(iso)], capture_output=True, text=True, check=True).stdout.split()[0]
        for fw in FIRMWARES:
            serial = OUT / "logs" / f"serial-{i + 1}-{fw}.log"
            t0 = time.monotonic()
            boot = composer(
                "verify",
                "--iso",
                str(iso),
                "--firmware",
                fw,
                "--memory",
                memory,
                "--log",
                str(serial),
                log=OUT / "logs" / f"verify-{i + 1}-{fw}.out",
            )
            passed = boot.returncode == 0
            ok[fw] += passed
            rnd[fw] = {"ok": passed, "boot_s": round(time.monotonic() - t0, 1)}
            if not passed and first_failure is None:
                first_failure = serial
        rounds.append(rnd)
        print(
            f"soak {i + 1}/{n}: epoch {epoch}: compose {rnd['compose_s']} s, "
            + ", ".join(
                f"{fw} {'ok' if rnd[fw]['ok'] else 'FAILED'} ({rnd[fw]['boot_s']} s)"  # type: ignore[index]
                for fw in FIRMWARES
            )
            + f" (load {rnd['load']})",
            flush=True,
        )
    shutil.rmtree(OUT / "iso", ignore_errors=True)
    result = {
        "n": n,
        "memory_mb": int(memory),
        "ok": ok,
        "rounds": rounds,
        "wall_s": round(time.monotonic() - t_all, 1),
        "first_failure": str(first_failure) if first_failure else None,
    }
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"soak: {n} rebuilds of boot.iso at {memory} MB, {result['wall_s']} s: "
        + ", ".join(f"{'SeaBIOS' if fw == 'bios' else 'OVMF'} {ok[fw]}/{n}" for fw in FIRMWARES)
    )
    if first_failure is not None:
        print(f"soak: first failure: {first_failure}\n" + first_failure.read_text(errors="replace")[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
