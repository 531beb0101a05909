import pytest

from composer.config import Config, parse_size
from composer.product import template_dir
from composer.run import ComposerError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1048576", 1 << 20),
        ("1.5g", int(1.5 * (1 << 30))),
        ("64MiB", 64 << 20),
        ("10k", 10 << 10),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text, "--rootfs-size") == expected


@pytest.mark.parametrize("text", ["lots", "12X", "", "-5M"])
def test_parse_size_rejects_garbage_naming_the_option(text):
    with pytest.raises(ComposerError, match="--rootfs-size"):
        parse_size(text, "--rootfs-size")


def test_unknown_product_lists_known_ones(tmp_path):
    cfg = Config(product="NoSuchOS", version="1", outdir=tmp_path)
    with pytest.raises(ComposerError, match="--product NoSuchOS.*testproduct"):
        template_dir(cfg)


def test_product_template_dir_is_case_insensitive(tmp_path):
    assert template_dir(Config(product="TestProduct", version="1", outdir=tmp_path)).name == "testproduct"
