"""`composer netboot OUTDIR --url URL`: a tree a PXE/TFTP/HTTP boot server serves as is.

Per kernel (newest first; several kernels give several menu entries):
* default, single image: images/pxeboot/vmlinuz + the big initrd (initramfs + squashfs,
  boots from RAM; the boot configs pass root=live:/squashfs.img so the kernel unpacks
  it into an uncapped ramfs);
* --split: the small initrd + images/install.img, which dracut's livenet module
  fetches at boot (root=live:<URL>images/install.img; the initramfs gets livenet);
* --nbd HOST[:PORT] (split too): install.img is read on demand from an NBD server
  (dracut's nbd module; the tree's nbd-server.conf exports it), never copied into RAM.

Boot loaders and configs, all rendered from the product's templates with the URL:
* pxelinux.cfg/default (netboot-pxelinux.cfg), with pxelinux.0 + ldlinux.c32 (a
  matching pair, both from one place): from the install tree when its templates
  install syslinux (as lorax takes them), else from the build host (Debian:
  pxelinux + syslinux-common, in scripts/setup-host). The test product's runtime
  does not carry syslinux (it would only cost RAM), so its trees use the host's;
  netboot.json records which;
* GRUB for PXE: grubx64.efi (UEFI) and grubpxe.0 (BIOS), both reading
  grub2/grub.cfg over TFTP (netboot-grub2.cfg);
* boot.ipxe (netboot.ipxe), an iPXE script that fetches everything from URL.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import urlsplit

from composer.config import Config
from composer.images.efiboot import EFI_ARCH_NAMES, find_grub, grub_mkimage
from composer.images.sparse import copy_sparse
from composer.outputs import ram
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.media import boot_kernels, copy_file, join_args, render_config
from composer.outputs.nbd import NBD_PORT, NbdServer, nbd_server_conf
from composer.pipelines.runtime import Runtime, build_runtime, compose_dirs, log_summary
from composer.preflight import check_menu_value
from composer.product import template_dir, template_variables
from composer.run import ComposerError, info, stage

PXELINUX_DIRS = ("usr/share/syslinux", "usr/lib/PXELINUX", "usr/lib/syslinux/modules/bios", "usr/lib/syslinux")
# template -> place in the netboot tree
CONFIGS = {
    "netboot-pxelinux.cfg": "pxelinux.cfg/default",
    "netboot-grub2.cfg": "grub2/grub.cfg",
    "netboot.ipxe": "boot.ipxe",
}
# The product's dracut configuration for netboot initrds (livenet and its network
# handler for --split), rendered with the netboot variables.
DRACUT_TEMPLATE = "netboot-dracut.conf"
GRUB_NET_PREFIX = "(tftp)/grub2"
NET_MODULES = (
    "net",
    "tftp",
    "http",
    "linux",
    "normal",
    "configfile",
    "echo",
    "test",
    "serial",
    "terminal",
    "search",
    "halt",
    "reboot",
    "sleep",
    "gzio",
    "xzio",
    "boot",
    "minicmd",
    "ls",
    "cat",
    "true",
    "regexp",
)


NBD_CONF = "nbd-server.conf"


@dataclasses.dataclass(frozen=True)
class NetbootOptions:
    url: str
    split: bool = False
    kernel_args: tuple[str, ...] = ()
    nbd: NbdServer | None = None  # set: split, the runtime read over NBD

    @property
    def transport(self) -> str:
        """How the guest's initramfs reaches the runtime."""
        return "nbd" if self.nbd else "livenet" if self.split else "initrd"


def parse_nbd(value: str, product: str, version: str) -> NbdServer:
    """--nbd HOST[:PORT] (a name or an IPv4 address as the guest reaches it); the export is
    named after the product so that one server can export several trees."""
    host, _, port = value.partition(":")
    if not host or not all(c.isalnum() or c in ".-" for c in host):
        raise ComposerError(f"--nbd {value!r}: expected HOST or HOST:PORT (a host name or IPv4 address), e.g. 10.0.0.1:10809")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ComposerError(f"--nbd {value!r}: the port must be a number from 1 to 65535")
    export = f"{product}-{version}-install.img"
    check_menu_value("--nbd", value)
    return NbdServer(host, int(port) if port else NBD_PORT, "".join(c if c.isalnum() or c in ".-_" else "_" for c in export))


def normalize_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ComposerError(f"--url {url!r}: not a URL ({e})") from None
    if parts.scheme not in ("http", "https", "tftp", "ftp", "nfs") or not parts.netloc:
        raise ComposerError(f"--url {url!r}: expected e.g. http://server/path/ (http, https, tftp, ftp or nfs)")
    if any(c.isspace() for c in url):
        raise ComposerError(f"--url {url!r}: must not contain white space")
    check_menu_value("--url", url)  # it lands in every boot menu and kernel command line
    return url if url.endswith("/") else url + "/"


def netboot_variables(cfg: Config, opts: NetbootOptions, versions: list[str]) -> dict[str, object]:
    variables = template_variables(cfg)
    variables.update(
        {
            "url": opts.url,
            "split": opts.split,
            "nbd": opts.nbd,
            "kernels": boot_kernels(versions),
            "extra_args": join_args(opts.kernel_args),
            "overlay_args": " ".join(cfg.rootfs_type.live_args),
            "ram_mb": 0,  # the RAM budget (outputs/ram.py), known once the initrds are in place
            "ram_stop_mb": 0,  # the least RAM it boots in, known then too
        }
    )
    return variables


def check_boot_configs(cfg: Config, opts: NetbootOptions) -> None:
    variables = netboot_variables(cfg, opts, ["0.0.0-sample"])
    for name in CONFIGS:
        text = render_config(template_dir(cfg), name, variables)
        if opts.nbd and "netroot=nbd:" not in text:
            raise ComposerError(f"--nbd: the {cfg.product} templates' {name} does not boot from NBD (no netroot=nbd:)")
    if (template_dir(cfg) / DRACUT_TEMPLATE).is_file():
        render_config(template_dir(cfg), DRACUT_TEMPLATE, variables)


def _find_pxelinux(tree: Path) -> tuple[dict[str, Path], str]:
    """pxelinux.0 and ldlinux.c32 from the tree, else the host; and where they came from."""
    for root, origin in ((tree, "tree"), (Path("/"), "host")):
        found: dict[str, Path] = {}
        for name in ("pxelinux.0", "ldlinux.c32"):
            for d in PXELINUX_DIRS:
                if (root / d / name).is_file():
                    found[name] = root / d / name
                    break
        if len(found) == 2:
            info(f"pxelinux: from the {origin} ({found['pxelinux.0'].parent})")
            return found, origin
    info(
        "pxelinux: no pxelinux.0 in the install tree or on this host (Debian: apt-get install pxelinux); "
        "pxelinux.cfg/default is written anyway"
    )
    return {}, "none"


@dataclasses.dataclass(frozen=True)
class NetbootResult:
    """What make_netboot made and chose, for netboot.json and the summary line (its time is in rt.metrics)."""

    sizes: dict[str, int]  # the netboot tree's initrds (and install.img)
    pxelinux: str  # where pxelinux.0 came from: "tree", "host" or "none"
    budgets: dict[str, ram.RamBudget]  # per kernel


def make_netboot(cfg: Config, opts: NetbootOptions, rt: Runtime, out: Path) -> NetbootResult:
    """Stage `netboot tree`: kernels and initrds, the boot configs and the boot loaders."""
    sizes: dict[str, int] = {}
    versions = [k.version for k in rt.kernels]
    kernels = boot_kernels(versions)
    variables = netboot_variables(cfg, opts, versions)
    with stage("netboot tree", rt.metrics, key="netboot_tree"):
        cmdline = runtime_cmdline(cfg.rootfs_type)
        budgets: dict[str, ram.RamBudget] = {}
        for bk, k in zip(kernels, rt.kernels, strict=True):
            copy_file(k.vmlinuz, out / bk.kernel)
            if opts.split:
                # The small initrd carries its RAM budget: below it, it says the boot will be slow;
                # below its stop, it stops with one line.
                budgets[k.version] = ram.predict(
                    "netboot-nbd" if opts.nbd else "netboot-split",
                    k.vmlinuz,
                    rt.initramfs[k.version],
                    rt.squashfs,
                    unpacked=rt.initramfs_ram[k.version],
                )
                ram.with_memory_check(
                    rt.initramfs[k.version], out / bk.initrd, budgets[k.version], mtime=cfg.source_date_epoch or 0
                )
            else:
                tail = make_big_initrd(
                    rt.initramfs[k.version], rt.squashfs, cmdline, out / bk.initrd, mtime=cfg.source_date_epoch or 0
                )
                budgets[k.version] = ram.predict_big_initrd(
                    k.vmlinuz, out / bk.initrd, appended_at=tail, initramfs_unpacked=rt.initramfs_ram[k.version]
                )
            sizes[bk.initrd] = (out / bk.initrd).stat().st_size
        variables["ram_mb"] = budgets[rt.kernels[0].version].floor_mb
        variables["ram_stop_mb"] = budgets[rt.kernels[0].version].stop_mb
        if opts.split:
            copy_sparse(rt.squashfs, out / "images" / "install.img")
            sizes["images/install.img"] = (out / "images" / "install.img").stat().st_size
            if opts.nbd:
                conf = nbd_server_conf(opts.nbd, "images/install.img")
                (out / NBD_CONF).write_text(
                    f"# nbd-server -C {NBD_CONF}, run from the netboot tree's root (exportname is relative to it)\n{conf}"
                )
        for name, dest in CONFIGS.items():
            target = out / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render_config(template_dir(cfg), name, variables))
        pxelinux, pxelinux_origin = _find_pxelinux(rt.tree)
        for name, src in pxelinux.items():
            copy_file(src, out / name)
        efi = EFI_ARCH_NAMES.get(cfg.arch)
        if efi is not None:
            grub = find_grub(rt.tree, f"{cfg.arch}-efi")
            grub_mkimage(
                grub,
                f"{cfg.arch}-efi",
                GRUB_NET_PREFIX,
                out / f"grub{efi[0]}.efi",
                modules=NET_MODULES + ("efinet", "efi_gop", "all_video"),
            )
        if cfg.arch in ("x86_64", "i686"):
            grub = find_grub(rt.tree, "i386-pc")
            grub_mkimage(grub, "i386-pc-pxe", GRUB_NET_PREFIX, out / "grubpxe.0", modules=NET_MODULES + ("pxe",))
    return NetbootResult(sizes, pxelinux_origin, budgets)


def netboot_dracut_conf(cfg: Config, opts: NetbootOptions, work: Path) -> Config:
    """cfg whose dracut configuration adds the product's netboot-dracut.conf (split:
    livenet and a network handler); a user's --dracut-conf comes after it and wins."""
    if not (template_dir(cfg) / DRACUT_TEMPLATE).is_file():
        if opts.split:  # a template set without one: at least dracut's livenet
            return dataclasses.replace(cfg, dracut_args=cfg.dracut_args + ("--add", "livenet"))
        return cfg
    text = render_config(template_dir(cfg), DRACUT_TEMPLATE, netboot_variables(cfg, opts, []))
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        return cfg
    if cfg.dracut_conf is not None:
        if not cfg.dracut_conf.is_file():
            raise ComposerError(f"--dracut-conf {cfg.dracut_conf}: no such file")
        text += f"# --dracut-conf {cfg.dracut_conf}\n" + cfg.dracut_conf.read_text()
    conf = work / "netboot-dracut.conf"
    conf.write_text(text)
    return dataclasses.replace(cfg, dracut_conf=conf)


def compose_netboot(cfg: Config, opts: NetbootOptions) -> Path:
    check_boot_configs(cfg, opts)
    with compose_dirs(cfg) as (out, work):
        cfg = netboot_dracut_conf(cfg, opts, work)
        rt = build_runtime(cfg, work)
        result = make_netboot(cfg, opts, rt, out)
        (out / "netboot.json").write_text(
            json.dumps(
                {
                    "product": cfg.product,
                    "version": cfg.version,
                    "arch": cfg.arch,
                    "url": opts.url,
                    "split": opts.split,
                    "runtime": opts.transport,
                    **({"nbd": dataclasses.asdict(opts.nbd)} if opts.nbd else {}),
                    "kernels": [k.version for k in rt.kernels],
                    "pxelinux": result.pxelinux,
                    "sizes": {**rt.metrics.sizes, **result.sizes},
                    "timings": rt.metrics.timings,
                    "ram": ram.manifest_record(result.budgets),
                },
                indent=2,
            )
            + "\n"
        )
        log_summary(result.sizes, rt.metrics.timings, result.budgets)
    info(
        f"netboot tree in {cfg.outdir}: serve it at {opts.url} (TFTP root and/or HTTP); "
        "boot files: pxelinux.0, grubpxe.0, grubx64.efi, boot.ipxe"
    )
    return cfg.outdir
