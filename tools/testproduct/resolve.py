"""Choose and fetch the Debian packages of the test product (apt, no dpkg state touched)."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from composer.run import ComposerError, info, run

# What the runtime needs beyond Debian's Essential set. dracut-core's modules
# need (at initramfs build time): cpio, kmod, udev, blkid/losetup (util-linux),
# dmsetup + its udev rules (dmsetup), xz (--xz), squashfs-tools (dracut-squash);
# e2fsprogs/btrfs-progs/erofs-utils build the rootfs images' tools into the runtime.
# dracut-network (+ its isc-dhcp-client, iputils-arping) and curl: the livenet
# module of the split netboot initrd fetches install.img over HTTP.
# grub-pc-bin, grub-efi-amd64-bin (+ grub-common's grub-mkimage): GRUB from the image's
# own tree for livemedia --make-disk (tools/testproduct/disk.ks).
EXTRA_ROOTS = (
    "usr-is-merged",
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "dracut",
    "dracut-core",
    "dracut-live",
    "dracut-squash",
    "dracut-network",
    "curl",
    "nbd-client",
    "dmsetup",
    "kpartx",
    "bash",
    "coreutils",
    "util-linux",
    "mount",
    "kmod",
    "busybox",
    "btrfs-progs",
    "e2fsprogs",
    "erofs-utils",
    "squashfs-tools",
    "procps",
    "iproute2",
    "less",
    "xz-utils",
    "cpio",
    "mawk",
    "passwd",
    "login",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
)

APT_SIM_OPTS = ("-o", "APT::Install-Recommends=0", "-o", "APT::Install-Suggests=0")


@dataclass(frozen=True, order=True)
class DebPkg:
    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        # apt-get download's file name: the epoch colon is URL-encoded
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _essential_packages() -> list[str]:
    out = run(["apt-cache", "dumpavail"], capture=True).stdout.decode(errors="replace")
    names: set[str] = set()
    for stanza in out.split("\n\n"):
        name = ess = None
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Essential:"):
                ess = line.split(":", 1)[1].strip()
        if name and ess == "yes":
            names.add(name)
    return sorted(names)


def _apt_has(pkg: str) -> bool:
    return run(["apt-cache", "show", pkg], capture=True, check=False, quiet=True).returncode == 0


_INST_RE = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]]+)\]\)")


def parse_simulation(text: str) -> list[DebPkg]:
    pkgs: list[DebPkg] = []
    for line in text.splitlines():
        if not line.startswith("Inst "):
            continue
        m = _INST_RE.match(line)
        if not m:
            raise ComposerError(f"cannot parse apt-get simulation line: {line}")
        name = m.group(1).split(":", 1)[0]
        pkgs.append(DebPkg(name, m.group(2), m.group(3)))
    return sorted(set(pkgs))


def resolve(roots: tuple[str, ...] = EXTRA_ROOTS) -> list[DebPkg]:
    """The closure apt would install on an empty system (no Recommends)."""
    if not _apt_has("linux-image-amd64"):
        info("test product: apt has no package lists, running apt-get update")
        run(["apt-get", "update"])
        if not _apt_has("linux-image-amd64"):
            raise ComposerError("apt knows no linux-image-amd64 even after apt-get update: check /etc/apt/sources.list")
    essential = _essential_packages()
    if not essential:
        raise ComposerError("apt-cache dumpavail lists no Essential packages")
    all_roots = sorted(set(essential) | set(roots))
    with tempfile.TemporaryDirectory(prefix="composer-apt-") as tmp:
        status = Path(tmp) / "status"
        status.touch()
        proc = run(
            ["apt-get", "-s", "-o", f"Dir::State::Status={status}", *APT_SIM_OPTS, "install", *all_roots],
            capture=True,
        )
    pkgs = parse_simulation(proc.stdout.decode(errors="replace"))
    if not pkgs:
        raise ComposerError("apt-get simulation selected no packages")
    names = {p.name for p in pkgs}
    missing = [r for r in all_roots if r not in names]
    if missing:
        raise ComposerError(f"apt did not select root packages: {' '.join(missing)}")
    return pkgs


def download(pkgs: list[DebPkg], debdir: Path) -> list[Path]:
    """apt-get download what is not in debdir yet; returns the .deb paths in package order."""
    debdir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in pkgs if not (debdir / p.filename).is_file()]
    if missing:
        info(f"test product: downloading {len(missing)} of {len(pkgs)} packages")
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debdir))
        try:
            run(
                ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *(f"{p.name}={p.version}" for p in missing)],
                cwd=tmp,
            )
            for p in missing:
                got = tmp / p.filename
                if not got.is_file():
                    raise ComposerError(f"apt-get download did not produce {p.filename}")
                got.rename(debdir / p.filename)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [debdir / p.filename for p in pkgs]
