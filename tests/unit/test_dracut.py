import lzma

import pytest

from composer.config import RootfsType
from composer.dracut import (
    ModuleIndex,
    argv_driver_sets,
    conf_driver_sets,
    dracut_argv,
    find_kernels,
)
from composer.run import ComposerError


def test_find_kernels_fedora_and_debian_layouts(tmp_path):
    (tmp_path / "usr/lib/modules/6.1.0-9-amd64").mkdir(parents=True)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-9-amd64").write_bytes(b"k")
    (tmp_path / "usr/lib/modules/6.10.3-200.fc43.x86_64").mkdir(parents=True)
    (tmp_path / "usr/lib/modules/6.10.3-200.fc43.x86_64/vmlinuz").write_bytes(b"k")
    # modules without a kernel image (e.g. a leftover extra dir) are not a kernel
    (tmp_path / "usr/lib/modules/6.0.0-extra").mkdir(parents=True)
    ks = find_kernels(tmp_path)
    assert [k.version for k in ks] == ["6.10.3-200.fc43.x86_64", "6.1.0-9-amd64"]


def test_dracut_adds_the_rootfs_driver():
    argv = dracut_argv("6.1", "/tmp/out/i.img", RootfsType.BTRFS, ["--xz"])
    assert argv[argv.index("--add-drivers") + 1] == "btrfs"
    assert "--no-hostonly" in argv and argv[-1] == "/tmp/out/i.img" and "--xz" in argv
    assert "--add-drivers" not in dracut_argv("6.1", "/o", RootfsType.SQUASHFS, [])


def test_conf_driver_sets_follow_dracut_order():
    sets = conf_driver_sets(
        [
            ("90.conf", 'add_drivers+=" squashfs loop "\n# drivers="commented"\nhostonly="no"\n'),
            ("95.conf", 'drivers+=" ahci sd_mod "   # buses\ndrivers+=" sr_mod "\nfilesystems+=" isofs "\n'),
            ("99.conf", "add_drivers='loop'\n"),
        ]
    )
    assert sets["drivers"] == ["ahci", "sd_mod", "sr_mod"]
    assert sets["add_drivers"] == ["loop"]  # a plain = replaces, as in the shell
    assert sets["filesystems"] == ["isofs"]
    assert argv_driver_sets(["--add-drivers", "a b", "--drivers=c", "--xz"]) == {
        "drivers": ["c"],
        "add_drivers": ["a", "b"],
        "force_drivers": [],
        "filesystems": [],
    }


def test_conf_driver_sets_refuse_shell_expansion():
    with pytest.raises(ComposerError, match=r"p.conf:2: .*shell expansion"):
        conf_driver_sets([("p.conf", '\ndrivers+=" $EXTRA "\n')])
    with pytest.raises(ComposerError, match=r"p.conf:1:"):
        conf_driver_sets([("p.conf", "drivers+=$(ls)\n")])


def _fake_moddir(root):
    kernel = root / "kernel"
    for rel in (
        "fs/btrfs/btrfs.ko",
        "lib/libcrc32c.ko",
        "crypto/crc32c_generic.ko",
        "arch/x86/crypto/crc32c-intel.ko",
        "drivers/ata/ahci.ko",
        "drivers/ata/libata.ko",
        "drivers/md/dm-mod.ko",
        "drivers/md/raid456.ko",
    ):
        (kernel / rel).parent.mkdir(parents=True, exist_ok=True)
        (kernel / rel).write_bytes(b"\x7fELF" + rel.encode() * 50)
    (root / "modules.dep").write_text(
        "kernel/fs/btrfs/btrfs.ko: kernel/lib/libcrc32c.ko\n"
        "kernel/lib/libcrc32c.ko:\nkernel/crypto/crc32c_generic.ko:\n"
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n"
        "kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko\nkernel/drivers/ata/libata.ko:\n"
        "kernel/drivers/md/dm-mod.ko:\nkernel/drivers/md/raid456.ko:\n"
    )
    (root / "modules.alias").write_text(
        "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v*d*sv* ahci\n"
    )
    (root / "modules.softdep").write_text("# soft\nsoftdep btrfs pre: crypto-crc32c\n")
    (root / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")


def test_module_closure_follows_deps_softdeps_and_aliases(tmp_path):
    _fake_moddir(tmp_path)
    index = ModuleIndex.read(tmp_path)
    mods, missing = index.closure(["btrfs", "ahci", "dm_mod", "loop", "nosuch"])
    assert mods == {
        "kernel/fs/btrfs/btrfs.ko",
        "kernel/lib/libcrc32c.ko",
        "kernel/crypto/crc32c_generic.ko",
        "kernel/arch/x86/crypto/crc32c-intel.ko",
        "kernel/drivers/ata/ahci.ko",
        "kernel/drivers/ata/libata.ko",
        "kernel/drivers/md/dm-mod.ko",
    }
    assert missing == ["nosuch"]  # loop is built in: nothing to carry, nothing missing
    assert index.closure(["=drivers/md"])[0] == {"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/raid456.ko"}


def test_xz_modules_are_what_the_kernel_and_kmod_read():
    from composer.dracut import _xz_module

    data = b"\x7fELF" + bytes(range(256)) * 400
    packed = _xz_module(data)
    assert lzma.decompress(packed) == data
    # kmod and the kernel's decompressor want CRC32 checks (byte 7 of the stream header: 0x01)
    assert packed[:6] == b"\xfd7zXZ\x00" and packed[7] == 0x01


def test_the_trees_own_confs_count_in_dracuts_order(tmp_path):
    """A package's or a kickstart's dracut.conf in the tree adds to the driver set, in dracut's
    order (by file name, /etc over /usr/lib, composer's bound files over the tree's of that name);
    a conf linked to /dev/null is masked."""
    from composer.dracut import _as_dracut_reads

    tree, ours = tmp_path / "tree", tmp_path / "ours"
    (tree / "etc/dracut.conf.d").mkdir(parents=True)
    (tree / "usr/lib/dracut/dracut.conf.d").mkdir(parents=True)
    ours.mkdir()
    (tree / "etc/dracut.conf").write_text('add_drivers+=" first "\n')
    (tree / "usr/lib/dracut/dracut.conf.d/01-dist.conf").write_text('add_drivers+=" dist "\n')
    (tree / "usr/lib/dracut/dracut.conf.d/50-live-usb.conf").write_text('filesystems+=" vfat "\n')
    (tree / "etc/dracut.conf.d/50-live-usb.conf").write_text('filesystems+=" ext4 "\n')  # /etc's wins
    (tree / "etc/dracut.conf.d/60-masked.conf").symlink_to("/dev/null")
    (tree / "etc/dracut.conf.d/90-composer.conf").write_text('drivers=" overridden "\n')
    (ours / "90-composer.conf").write_text('drivers+=" squashfs "\n')
    (ours / "95-product.conf").write_text('drivers+=" sr_mod "\n')
    confs = [(ours / n, f"/etc/dracut.conf.d/{n}") for n in ("90-composer.conf", "95-product.conf")]
    texts = _as_dracut_reads(tree, confs)
    assert [name.rsplit("/", 1)[-1] for name, _ in texts] == [
        "dracut.conf",
        "01-dist.conf",
        "50-live-usb.conf",
        "90-composer.conf",
        "95-product.conf",
    ]
    sets = conf_driver_sets(texts)
    assert sets["drivers"] == ["squashfs", "sr_mod"]
    assert sets["add_drivers"] == ["first", "dist"]
    assert sets["filesystems"] == ["ext4"]
