from composer.config import RootfsType
from composer.dracut import dracut_argv, find_kernels


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
