"""`composer mkksiso` on the test product's real boot.iso, run by an ordinary user, booted.

The session's boot.iso (tests/conftest.py bootiso_build) is remastered by a throwaway
unprivileged user with a kickstart, an added directory, two arguments added
(composer.list=/extra, which the test product's boot check lists, and no_timer_check),
one removed (rd.live.image, on every entry of the test product's menus; dracut does not
need it with root=live:) and a new volume id (every menu must follow, or the boot cannot
find its medium). The result boots under SeaBIOS (GRUB from El Torito) and OVMF (GRUB
from efiboot.img, whose own grub.cfg had to be edited), and the guest's boot check
prints what it saw: its /proc/cmdline, the kickstart at the inst.ks path and the files
under composer.list on the medium found by the label.

Time: the remaster ~1-2 s; two boots of 1.5-3 min each under TCG.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from testproduct import BOOT_MARKER
from tests.conftest import composer, python_for_user

pytestmark = pytest.mark.slow

USER = "composer-remaster"
VOLID = "REMASTER-1"
EPOCH = 1700000000
KICKSTART = "# composer mkksiso test kickstart\ntext\nlang en_US.UTF-8\n"


def _ensure_user() -> tuple[str, bool]:
    """The throwaway user (no home, no login, no groups); True if this test made it."""
    try:
        pwd.getpwnam(USER)
        return USER, False
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", USER],
        check=True,
        capture_output=True,
    )
    return USER, True


def _as_user(user: str, argv: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    assigns = [f"{k}={v}" for k, v in env.items()]
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *assigns, *argv], capture_output=True, text=True, cwd="/", check=False, **kw
    )


def _user_python(user: str, shared: Path) -> tuple[str, dict[str, str]]:
    site = shared / "site"
    site.mkdir()
    return python_for_user(
        lambda python, env: _as_user(
            user, [python, "-c", "import composer.cli, composer.pipelines.mkksiso, pykickstart.parser"], env
        ),
        site,
        {"HOME": str(shared)},
    )


@pytest.fixture(scope="module")
def remastered(bootiso_build):
    """(remastered ISO, seconds the remaster took, input ISO)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and switch to an unprivileged user")
    user, made = _ensure_user()
    # A directory both can reach (pytest's own tmp dirs are 0700); the ISO hard-linked into it.
    shared = Path(tempfile.mkdtemp(prefix="composer-mkksiso-"))
    try:
        shared.chmod(0o755)
        src = shared / "boot.iso"
        try:
            os.link(bootiso_build / "out/images/boot.iso", src)
        except OSError:
            shutil.copyfile(bootiso_build / "out/images/boot.iso", src)
        src.chmod(0o644)
        (shared / "ks.cfg").write_text(KICKSTART)
        (shared / "extra/sub").mkdir(parents=True)
        (shared / "extra/sub/hello.txt").write_text("hello\n")
        (shared / "extra/two.txt").write_text("two\n")
        out = shared / "out"
        out.mkdir()
        shutil.chown(out, user, user)
        python, env = _user_python(user, shared)
        args = [
            "mkksiso",
            "--ks",
            str(shared / "ks.cfg"),
            "-a",
            str(shared / "extra"),
            "-c",
            "composer.list=/extra no_timer_check",
            "-r",
            "rd.live.image",
            "--volid",
            VOLID,
            "--source-date-epoch",
            str(EPOCH),
            str(src),
            str(out / "remastered.iso"),
        ]
        t0 = time.monotonic()
        proc = _as_user(user, [python, "-m", "composer", *args], env, timeout=600)
        seconds = time.monotonic() - t0
        assert proc.returncode == 0, proc.stderr[-3000:]
        iso = out / "remastered.iso"
        assert iso.stat().st_uid == pwd.getpwnam(user).pw_uid
        assert sorted(p.name for p in out.iterdir()) == ["remastered.iso"]
        print(
            f"\nmkksiso as {user}: {seconds:.1f}s; {src.stat().st_size / 2**20:.1f} MiB -> {iso.stat().st_size / 2**20:.1f} MiB"
        )
        # The same remaster by root gives the same bytes: nothing depends on who ran it.
        by_root = shared / "by-root.iso"
        composer(*args[:-1], str(by_root))
        assert by_root.read_bytes() == iso.read_bytes(), "the user's and root's remasters differ"
        yield iso, seconds, src
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        if made:
            subprocess.run(["userdel", user], check=False, capture_output=True)


def test_remastered_iso_keeps_the_boot_layout(remastered, tmp_path):
    from tests.isoread import el_torito_platforms, el_torito_report, mbr_partitions

    iso, _, src = remastered
    assert el_torito_platforms(el_torito_report(iso)) == ["BIOS", "UEFI"]
    assert [p[1] for p in mbr_partitions(iso)] == [p[1] for p in mbr_partitions(src)]  # hybrid: 0x83 + EFI 0xef
    proc = subprocess.run(["checkisomd5", str(iso)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == VOLID
    # the removed argument was really there: on every entry of the input's menus
    for n, menu in enumerate(("/EFI/BOOT/grub.cfg", "/boot/grub2/grub.cfg")):
        subprocess.run(
            ["xorriso", "-osirrox", "on", "-indev", str(src), "-extract", menu, str(tmp_path / str(n))],
            capture_output=True,
            check=True,
        )
        text = (tmp_path / str(n)).read_text()
        entries = [ln for ln in text.splitlines() if ln.strip().startswith("linux ")]
        assert entries and all(" rd.live.image " in ln for ln in entries), text


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_remastered_iso_boots_and_the_guest_sees_the_changes(remastered, firmware, tmp_path):
    from composer.verify import boot_iso

    iso, _, _ = remastered
    log = tmp_path / f"serial-{firmware}.log"
    result = boot_iso(iso, firmware=firmware, memory_mb=512, timeout=900, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{firmware}: {result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    # (the getty's login prompt may share a line with the boot check's output)
    cmdline = re.search(r"COMPOSER-CMDLINE (.*)", serial)
    assert cmdline is not None, serial[-3000:]
    words = cmdline.group(1).split()
    assert f"root=live:CDLABEL={VOLID}" in words  # the menu followed the new volume id
    assert f"inst.ks=hd:LABEL={VOLID}:/ks.cfg" in words and "composer.list=/extra" in words and "no_timer_check" in words
    assert "rd.live.image" not in words  # removed
    assert f"COMPOSER-KS found {VOLID}:/ks.cfg first={KICKSTART.splitlines()[0]}" in serial, serial[-3000:]
    assert re.search(r"COMPOSER-LIST /extra: \./sub/hello\.txt \./two\.txt\s*$", serial, re.M), serial[-3000:]
    print(f"\n{firmware} boot of the remastered ISO to the marker: {result.seconds:.0f}s")
