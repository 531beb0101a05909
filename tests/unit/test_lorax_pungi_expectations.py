"""What Pungi gives lorax and expects back that composer did not meet, found by running Pungi
(issue 22; tests/integration/test_pungi.py runs the compose). One test per expectation."""

from __future__ import annotations

import pytest

from composer.images.iso import check_volid
from composer.pipelines.lorax import lorax_volid
from composer.run import ComposerError


def test_pungi_default_volid_with_a_space_is_taken_for_lorax_templates():
    # Pungi's default volume id format: "%(release_short)s-%(version)s %(variant)s.%(arch)s"
    assert lorax_volid("Fedora-43 Everything.x86_64") == "Fedora-43 Everything.x86_64"
    # composer's own media still use it as the label as it is: refused there
    with pytest.raises(ComposerError, match="not allowed"):
        check_volid("Fedora-43 Everything.x86_64")


@pytest.mark.parametrize("volid, error", [("x" * 33, "at most 32"), ("a\nb", "control characters")])
def test_lorax_volid_limits(volid, error):
    with pytest.raises(ComposerError, match=error):
        lorax_volid(volid)
