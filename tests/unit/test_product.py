"""What composer knows of a product: lorax's automatic branding."""

import pytest

from composer.product import pick_branding
from composer.templates import Branding


@pytest.mark.parametrize(
    "providers,variant,expected",
    [
        (
            ["fedora-release", "fedora-release-server", "fedora-release-workstation", "generic-release"],
            "Server",
            Branding("fedora-release-server", "fedora-logos"),
        ),
        (["fedora-release-workstation", "fedora-release"], "", Branding("fedora-release", "fedora-logos")),
        (["fedora-release", "fedora-release-kde"], "Everything", Branding("fedora-release", "fedora-logos")),
        (["generic-release"], "Server", Branding()),
        ([], "", Branding()),
        (["centos-stream-release"], "", Branding("centos-stream-release", "centos-logos")),
    ],
)
def test_pick_branding_as_lorax(providers, variant, expected):
    assert pick_branding(providers, variant) == expected
