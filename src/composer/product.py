"""What composer knows of a product's template set: where it is, the runtime templates
it runs in order, and the variables every template of a compose gets."""

from __future__ import annotations

from pathlib import Path

from composer.config import Config
from composer.run import DATADIR, ComposerError
from composer.templates import Arch, Branding, Product, lorax_variables

# The runtime templates of a product, in the order they run.
INSTALL_TEMPLATE = "runtime-install.tmpl"
POSTINSTALL_TEMPLATE = "runtime-postinstall.tmpl"
CLEANUP_TEMPLATE = "runtime-cleanup.tmpl"
RUNTIME_TEMPLATES = (INSTALL_TEMPLATE, POSTINSTALL_TEMPLATE, CLEANUP_TEMPLATE)


def template_dir(cfg: Config) -> Path:
    """The product's template set: templates/<product, lower case>, or cfg.templatedir."""
    if cfg.templatedir is not None:
        return cfg.templatedir
    name = cfg.product.lower().replace(" ", "")
    if not name or "/" in name or name.startswith("."):
        # The product names a directory under templates/: never a path out of it.
        raise ComposerError(f"--product {cfg.product!r}: not a product name (letters, digits, - and _)")
    d = DATADIR / "templates" / name
    if not d.is_dir():
        known = sorted(p.name for p in (DATADIR / "templates").iterdir() if p.is_dir())
        raise ComposerError(f"--product {cfg.product}: no template set {d} (known: {', '.join(known)})")
    return d


def template_variables(cfg: Config) -> dict[str, object]:
    # lorax's variable model (composer.templates.lorax_variables) plus composer's rootfs_type.
    product = Product(cfg.product, cfg.version, cfg.release, cfg.variant, cfg.bugurl, cfg.isfinal)
    variables = lorax_variables(product, Arch.of(cfg.arch))
    variables["rootfs_type"] = str(cfg.rootfs_type)
    variables.update(dict(cfg.add_template_vars))
    return variables


def pick_branding(release_packages: list[str], variant: str) -> Branding:
    """lorax's automatic branding: of the packages providing system-release (generic-*
    left out), the one for the variant if there is one, else the first by name; its logos
    package is named after its first word (fedora-release-server -> fedora-logos)."""
    names = sorted(n for n in release_packages if not n.startswith("generic"))
    if not names:
        return Branding()
    suffix = f"-{variant.lower()}"
    release = next((n for n in names if variant and n.endswith(suffix)), names[0])
    return Branding(release=release, logos=release.split("-", 1)[0] + "-logos")
