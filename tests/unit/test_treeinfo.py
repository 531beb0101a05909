""".treeinfo / .discinfo written with productmd."""

import pytest

from composer.outputs.treeinfo import write_discinfo, write_treeinfo
from composer.run import ComposerError


def make_tree(root):
    (root / "images/pxeboot").mkdir(parents=True)
    for rel in ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img", "images/install.img", "images/boot.iso"):
        (root / rel).write_bytes(rel.encode())
    return root


def test_treeinfo_loads_with_productmd(tmp_path):
    import productmd.treeinfo

    root = make_tree(tmp_path)
    images = {"kernel": "images/pxeboot/vmlinuz", "initrd": "images/pxeboot/initrd.img", "boot.iso": "images/boot.iso"}
    write_treeinfo(
        root / ".treeinfo",
        product="TestProduct",
        version="1",
        arch="x86_64",
        images={"x86_64": images},
        stage2="images/install.img",
        checksum_root=root,
        timestamp=1700000000,
    )
    ti = productmd.treeinfo.TreeInfo()
    ti.load(str(root / ".treeinfo"))
    assert ti.release.name == "TestProduct" and ti.release.version == "1"
    assert ti.tree.arch == "x86_64" and ti.tree.build_timestamp == 1700000000
    assert ti.stage2.mainimage == "images/install.img"
    assert ti.images.images["x86_64"] == images
    for rel in [*images.values(), "images/install.img"]:
        assert (root / rel).is_file()
        assert ti.checksums.checksums[rel][0] == "sha256"
    text = (root / ".treeinfo").read_text()
    assert "[stage2]\nmainimage = images/install.img" in text


def test_template_sections_are_merged(tmp_path):
    import productmd.treeinfo

    root = make_tree(tmp_path)
    (root / "images/pxeboot/xen.img").write_bytes(b"x")
    extra = {"images-xen": {"kernel": "images/pxeboot/xen.img"}, "custom": {"a": "b"}}
    write_treeinfo(
        root / ".treeinfo",
        product="P",
        version="2",
        arch="x86_64",
        images={"x86_64": {"kernel": "images/pxeboot/vmlinuz"}},
        extra=extra,
        checksum_root=root,
    )
    ti = productmd.treeinfo.TreeInfo()
    ti.load(str(root / ".treeinfo"))
    assert ti.images.images["xen"] == {"kernel": "images/pxeboot/xen.img"}
    assert ti.tree.platforms == {"x86_64", "xen"}


def test_missing_image_is_an_error(tmp_path):
    root = make_tree(tmp_path)
    with pytest.raises(ComposerError, match="images/efiboot.img is listed"):
        write_treeinfo(
            root / ".treeinfo",
            product="P",
            version="1",
            arch="x86_64",
            images={"x86_64": {"efiboot.img": "images/efiboot.img"}},
            checksum_root=root,
        )


def test_discinfo(tmp_path):
    import productmd.discinfo

    write_discinfo(tmp_path / ".discinfo", release="TestProduct 1", arch="x86_64", timestamp=1700000000)
    lines = (tmp_path / ".discinfo").read_text().splitlines()
    assert lines[1:] == ["TestProduct 1", "x86_64", "ALL"]
    di = productmd.discinfo.DiscInfo()
    di.load(str(tmp_path / ".discinfo"))
    assert di.arch == "x86_64" and int(di.timestamp) == 1700000000
