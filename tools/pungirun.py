"""A real Pungi compose of the Fedora-shaped test product, with composer as its lorax.

    python tools/pungirun.py BUILD    ->  BUILD/pungi/composes/<compose id> (prints its path)

Pungi 4.3.2 (../shared/peers/pungi-4.3.2, GPL: run, never copied into composer) is installed
into a virtual environment of its own (BUILD/pungi/venv, Debian's python3 with its site
packages: python3-dnf, python3-libcomps, python3-createrepo-c), and `pungi-koji` runs
tests/pungi/pungi.conf with `lorax` on PATH being composer's (composer.cli:lorax, the
composer-lorax entry point). See docs/pungi.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pungissh

ROOT = Path(__file__).resolve().parents[1]
PEER = Path(os.environ.get("PUNGI_PEER", ROOT.parent / "shared/peers/pungi-4.3.2"))
LORAX_PEER = Path(os.environ.get("LORAX_PEER", ROOT.parent / "shared/peers/lorax-40.5.19"))
# Debian's modules Pungi imports (python3-dnf, python3-libcomps, python3-createrepo-c).
DEBIAN_MODULES = ("dnf", "libcomps", "createrepo_c", "rpm")
# PyPI: Pungi's requirements (setup.py) come with it; kobo.rpmlib imports koji, whose Kerberos
# extra (requests-gssapi) needs headers to build and Pungi never logs in to a Koji here.
KOJI_DEPS = ("requests", "defusedxml", "python-dateutil")
# pungi-gather parses its kickstart-like configuration with pykickstart and imports Fedora's
# python-multilib (neither in setup.py; python-multilib is not on PyPI: PUNGI_MULTILIB is a
# pip requirement for it, a URL or a directory with its source). Default: this machine's stored
# copy of its GitHub repository (the `fetch` tool's /work/.mirror, beside the checkout), else GitHub.
_MULTILIB_MIRROR = ROOT.parent / ".mirror/Zyzyx+python-multilib/repo"
MULTILIB = os.environ.get(
    "PUNGI_MULTILIB",
    f"git+file://{_MULTILIB_MIRROR}@7ebc7d4"
    if _MULTILIB_MIRROR.is_dir()
    else "git+https://github.com/Zyzyx/python-multilib@7ebc7d4",
)
UNDECLARED = ("pykickstart", MULTILIB)
# Pungi 4.3.2 extends jsonschema 3's validators; 4.18 replaced the reference resolver it uses.
PINS = ("jsonschema<4",)


# Host programs Pungi runs here: isohybrid (checked at start: syslinux-utils), isoinfo (boot.iso's
# manifest, whatever createiso_use_xorrisofs says: genisoimage), xorrisofs, createrepo_c; mtools
# and unshare for the guestmount stand-in below.
HOST_PROGRAMS = ("isohybrid", "isoinfo", "xorrisofs", "createrepo_c", "mcopy", "unshare")


class PungiError(Exception):
    pass


def _run(argv: list[str | Path], **kw) -> None:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise PungiError(f"{' '.join(map(str, argv[:4]))} …: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")


def venv(base: Path) -> Path:
    """Pungi installed from the peer directory (a copy of it: pip builds in the tree)."""
    env = base / "venv"
    if (env / "bin/pungi-koji").exists():
        return env
    missing = [m for m in DEBIAN_MODULES if subprocess.run(["/usr/bin/python3", "-c", f"import {m}"]).returncode]
    if missing:
        raise PungiError(
            f"Debian's python3 lacks {', '.join(missing)} (apt-get install python3-dnf python3-libcomps python3-createrepo-c)"
        )
    if not (PEER / "setup.py").is_file():
        raise PungiError(f"no Pungi at {PEER} (PUNGI_PEER)")
    src = base / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(PEER, src, symlinks=True)
    _run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", env])
    pip: list[str | Path] = [env / "bin/python", "-m", "pip", "--disable-pip-version-check", "--quiet", "install"]
    _run([*pip, src, *KOJI_DEPS, *UNDECLARED, *PINS])
    _run([*pip, "--no-deps", "koji"])
    # setup.py's data files (variants.dtd, multilib) land in site-packages/usr/share/pungi;
    # Pungi looks for them in /usr/share/pungi, else in share/ beside its package's parent.
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "share").symlink_to("usr/share/pungi")
    _multilib_default_config(site)
    _openssh_text_output(site)
    return env


def _openssh_text_output(site: Path) -> None:
    """Pungi 4.3.2's openssh runroot reads the builder's `rpm -qa` with kobo's run(), which
    returns bytes on Python 3 (kobo 0.42), then joins them as text ("sequence item 0: expected
    str instance, bytes found") after the task succeeded: ask kobo for text, as its other calls do."""
    module = site / "pungi/runroot.py"
    text = module.read_text()
    old = "run(ssh_cmd, show_cmd=True, logfile=log_file)[1]"
    if old not in text:
        raise PungiError(f"{module}: not the Pungi 4.3.2 this works around")
    module.write_text(text.replace(old, "run(ssh_cmd, show_cmd=True, logfile=log_file, universal_newlines=True)[1]"))


def _multilib_default_config(site: Path) -> None:
    """Pungi 4.3.2 makes python-multilib's methods with config=None, which python-multilib 1.1
    (the release whose source is on GitHub) opens as a file name: give it the multilib.conf it
    ships. This Fedora-only library decides nothing here (the product has no multilib)."""
    module = site / "multilib/multilib.py"
    text = module.read_text()
    if "open(config, 'r')" not in text:
        raise PungiError(f"{module}: not the python-multilib 1.1 this works around")
    module.write_text(text.replace("open(config, 'r')", f"open(config or {str(site / 'etc/multilib.conf')!r}, 'r')"))


# Host workaround, not a step of Pungi's or composer's: Pungi's buildinstall mounts
# efiboot.img to put its tweaked grub.cfg in (guestmount if there is one, else mount -o loop);
# this host's kernel has no vfat and there is no libguestfs. These two do guestmount's job
# for a FAT image with mtools: files out on mount, changed files back on unmount.
GUESTMOUNT = """#!/bin/sh
# guestmount -a IMAGE -m /dev/sda DIR (tools/pungirun.py: mtools for a host without vfat)
set -e
image=$(realpath "$2") dir=$5
mcopy -s -p -n -i "$image" '::/*' "$dir/"
echo "$image" > "$dir.guestmount-image"
"""
FUSERMOUNT = """#!/bin/sh
# fusermount -u DIR: write DIR's files back into the image guestmount took them from
set -e
dir=$2
image=$(cat "$dir.guestmount-image")
find "$dir" -type f | while read -r f; do mcopy -o -i "$image" "$f" "::/${f#"$dir"/}"; done
rm -rf "${dir:?}"/* "$dir.guestmount-image"
"""


def tools_bin(base: Path, ssh_config: Path | None = None) -> Path:
    """`lorax` (composer's, as the composer-lorax entry point is written), the host workaround,
    and with a builder the `ssh` that reads its client configuration."""
    bindir = base / "bin"
    shutil.rmtree(bindir, ignore_errors=True)
    bindir.mkdir(parents=True)
    scripts = {
        "lorax": f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
        "from composer.cli import lorax\nsys.exit(lorax())\n",
        "guestmount": GUESTMOUNT,
        "fusermount": FUSERMOUNT,
    }
    if ssh_config:
        scripts["ssh"] = pungissh.ssh_wrapper(ssh_config)
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return bindir


def config(base: Path, repo: Path) -> Path:
    """tests/pungi beside the product's repository and a lorax.conf naming lorax's stock templates."""
    conf = base / "config"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree(ROOT / "tests/pungi", conf)
    (conf / "repo").symlink_to(repo)
    stock = LORAX_PEER / "share/templates.d/99-generic"
    if not stock.is_dir():
        raise PungiError(f"lorax's stock templates are not at {stock} (LORAX_PEER)")
    (conf / "lorax.conf").write_text(f"[lorax]\nsharedir = {stock}\n[compression]\ntype = lz4\n")
    options = {
        "configuration_file": {"scm": "file", "repo": "", "file": "lorax.conf"},
        "add_arch_template": [str(conf / "isolinux.tmpl")],
    }
    with open(conf / "pungi.conf", "a") as f:
        f.write(f"lorax_options = [('^.*$', {{'*': {options!r}}})]\n")
    return conf / "pungi.conf"


def compose(build: Path, repo: Path, *, ssh: bool = False) -> Path:
    """Run pungi-koji; returns the compose directory (raises PungiError if it failed). ssh:
    buildinstall through Pungi's openssh runroot, on a builder of this machine (pungissh.py)."""
    base = build / "pungi"
    missing = [p for p in HOST_PROGRAMS if shutil.which(p) is None]
    if missing:
        raise PungiError(
            f"not on this host: {', '.join(missing)} (apt-get install syslinux-utils genisoimage xorriso createrepo-c mtools)"
        )
    env = venv(base)
    conf = config(base, repo)
    if not ssh:
        return _pungi_koji(base, env, conf)
    try:
        with pungissh.builder(base) as (user, gid, ssh_config, venv_bin):
            with open(conf, "a") as f:
                f.write(pungissh.pungi_options(user, venv_bin))
            return _pungi_koji(base, env, conf, ssh=(ssh_config, gid))
    except pungissh.SshError as e:
        raise PungiError(str(e)) from None


def _pungi_koji(base: Path, env: Path, conf: Path, ssh: tuple[Path, int] | None = None) -> Path:
    path = f"{base / 'bin'}:{env / 'bin'}:{os.environ['PATH']}"
    target = base / "composes"
    target.mkdir(parents=True, exist_ok=True)
    before = set(target.iterdir())
    tmp = base / "tmp"
    tmp.mkdir(exist_ok=True)
    bindir = tools_bin(base, ssh[0] if ssh else None)
    # Pungi runs guestmount with an environment of its own, without PATH: the shell finds it in
    # its default path only (/usr/local/sbin first): in a mount namespace of its own, that is ours.
    private = [
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        'mount --bind "$0" /usr/local/sbin && exec "$@"',
        bindir,
    ]
    argv = [*private, env / "bin/pungi-koji", f"--config={conf}", f"--target-dir={target}", "--no-label", "--test"]
    # With a builder, the compose directory is shared with it as a farm shares it with its
    # builders' group: setgid to the builder user's group, so whatever Pungi makes below (0775
    # directories) is that group's and group-writable.
    umask = 0o002 if ssh else None
    if ssh:
        os.chown(target, -1, ssh[1])
        target.chmod(0o2775)
    proc = subprocess.run(
        [str(a) for a in argv],
        env={**os.environ, "PATH": path, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        umask=-1 if umask is None else umask,
    )
    made = sorted(set(target.iterdir()) - before - {p for p in target.iterdir() if p.is_symlink()})
    if proc.returncode != 0 or not made:
        where = f" (log: {made[-1]}/logs/global/pungi.global.log)" if made else ""
        raise PungiError(f"pungi-koji failed ({proc.returncode}){where}: {(proc.stdout + proc.stderr).strip()[-3000:]}")
    return made[-1]


PHASE = re.compile(r"^(\S+ \S+) \[(?:INFO|WARNING) *\] \[(BEGIN|DONE) *\] -+ PHASE: (\S+) -+$", re.M)


def phase_timings(compose_dir: Path) -> dict[str, float]:
    """Seconds per phase, from Pungi's own log ([BEGIN]/[DONE] lines of each PHASE)."""
    text = (compose_dir / "logs/global/pungi.global.log").read_text()
    begun: dict[str, datetime] = {}
    out: dict[str, float] = {}
    for stamp, what, phase in PHASE.findall(text):
        t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        if what == "BEGIN":
            begun[phase] = t
        elif phase in begun:
            out[phase] = (t - begun[phase]).total_seconds()
    return out


def boot_iso(compose_dir: Path) -> Path:
    """The buildinstall boot.iso Pungi linked into the compose (images.json names it too)."""
    found = sorted((compose_dir / "compose").glob("*/x86_64/iso/*-boot.iso")) or sorted(
        (compose_dir / "compose").glob("*/x86_64/os/images/boot.iso")
    )
    if not found:
        raise PungiError(f"{compose_dir}: no boot.iso in the compose")
    return found[0]


def main(argv: list[str]) -> int:
    """BUILD [--boot] [--ssh]: the compose, its phase timings, and with --boot its boot.iso booted
    under SeaBIOS (PUNGI_MEMORY MB, default 1024: the stock menus wait 60 s); --ssh: buildinstall
    through the openssh runroot on a builder of this machine, as an ordinary user (pungissh.py)."""
    build = Path(argv[0] if argv else ROOT / "build").resolve()
    try:
        result = compose(build, build / "fedoraproduct/repo", ssh="--ssh" in argv)
        print(json.dumps({"compose": str(result), "phases": phase_timings(result)}, indent=1), flush=True)
        if "--boot" in argv:
            iso, log = boot_iso(result), result / "logs/boot-bios-serial.log"
            memory = os.environ.get("PUNGI_MEMORY", "1024")
            verify = [sys.executable, "-m", "composer", "verify", "--iso", str(iso), "--firmware", "bios", "--press-enter"]
            _run([*verify, "--memory", memory, "--log", log], env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            print(f"{iso}: boots under SeaBIOS at {memory} MB (serial log {log})")
    except PungiError as e:
        print(f"pungi: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
