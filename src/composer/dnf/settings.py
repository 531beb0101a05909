"""What a build asks of dnf (DnfConfig), taken from its configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from composer.config import Config, DnfChoice, RepoOptions


@dataclasses.dataclass(frozen=True)
class DnfConfig:
    releasever: str
    arch: str
    sources: tuple[str, ...] = ()  # base URLs of repositories (--source)
    repofiles: tuple[Path, ...] = ()  # .repo files (--repo)
    excludepkgs: tuple[str, ...] = ()
    cachedir: Path = Path("/var/cache/composer/dnf")
    nogpgcheck: bool = False
    nodocs: bool = True
    weak_deps: bool = False  # install_weak_deps
    install_langs: str | None = None  # rpm's %_install_langs (None: all, "": none)
    dnf: DnfChoice = DnfChoice.AUTO
    root: Path | None = None  # where dnf and rpm come from (None: the host)
    mirrorlists: tuple[str, ...] = ()  # mirrorlist URLs, each a repository (lorax's -m)
    repo_options: RepoOptions = ()  # dnf options of the repository of one source or mirror list
    proxy: str | None = None  # for every repository
    sslverify: bool = True
    enablerepos: tuple[str, ...] = ()  # repository ids or globs of the .repo files, enabled
    disablerepos: tuple[str, ...] = ()  # ... then disabled (lorax's order)
    logdir: Path | None = None  # where dnf writes its logs (None: the work directory's dnf-log)


def dnf_config(cfg: Config) -> DnfConfig:
    """What a build's configuration asks of dnf."""
    return DnfConfig(
        releasever=cfg.version,
        arch=cfg.arch,
        sources=cfg.sources,
        repofiles=cfg.repofiles,
        excludepkgs=cfg.excludepkgs,
        cachedir=cfg.cachedir / "dnf",
        nogpgcheck=cfg.nogpgcheck,
        nodocs=cfg.nodocs,
        weak_deps=cfg.weak_deps,
        install_langs=cfg.install_langs,
        dnf=cfg.dnf,
        root=cfg.dnf_root,
        mirrorlists=cfg.mirrorlists,
        repo_options=cfg.repo_options,
        proxy=cfg.proxy,
        sslverify=cfg.sslverify,
        enablerepos=cfg.enablerepos,
        disablerepos=cfg.disablerepos,
        logdir=cfg.dnf_logdir,
    )
