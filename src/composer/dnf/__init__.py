"""The dnf stage: populate an install tree with the dnf command line.

Templates decide which packages go in (installpkg ... run_pkg_transaction); this package
only turns their requests into dnf transactions. dnf runs on the host with
--installroot, so the tree needs no package manager of its own.

Both command lines are spoken: dnf 4 (Debian 12, Fedora up to 40) and dnf5 (Fedora 41+,
where `dnf` is dnf5). A host without the wanted dnf can lend one from a root directory
(--dnf-root, e.g. Debian unstable's dnf5 made by scripts/dnf5-root): dnf and rpm then run
inside that root under bubblewrap, with the tree, the work directory, the package cache and
local repositories bound in at their own paths, so every path means the same in and out.

    settings  DnfConfig: what a build asks of dnf
    urls      URLs: the one check of a URL dnf fetches from, a proxy, credentials split off
    repos     repositories: .repo files read and checked, Repository, the 0600 reposdir files
    groups    comps groups in a request (@ID, @^ID, @ID/TYPES) and what the repositories offer
    programs  dnf 4 and dnf5: one CommandLine interface, two implementations; find_dnf
    sandbox   bubblewrap over the host or into a --dnf-root
    rpmdb     the tree's rpm database read
    session   DnfSession: one tree and the transactions that fill it
"""

from __future__ import annotations

# Every module of the package is imported here: a module of a package depends on the
# package, so one left out would close a circle (tests/unit/test_layers.py).
from composer.dnf.groups import DEFAULT_TYPES, Comps, GroupSpec, group_spec, is_group
from composer.dnf.programs import DNF_ROOT_ENV, DnfProgram, find_dnf
from composer.dnf.repos import check_config, check_repofile, read_repofile, repofile_paths
from composer.dnf.rpmdb import RPMDB, RpmFile, tree_ids
from composer.dnf.sandbox import host_sandbox, root_sandbox
from composer.dnf.session import DnfSession
from composer.dnf.settings import DnfConfig, dnf_config
from composer.dnf.urls import check_proxy, check_source, check_url, local_path, mirrorlist_urls, proxy_url, split_userinfo

__all__ = [
    "DEFAULT_TYPES",
    "DNF_ROOT_ENV",
    "RPMDB",
    "DnfConfig",
    "DnfProgram",
    "DnfSession",
    "RpmFile",
    "Comps",
    "GroupSpec",
    "check_config",
    "check_proxy",
    "check_repofile",
    "check_source",
    "check_url",
    "dnf_config",
    "find_dnf",
    "group_spec",
    "host_sandbox",
    "is_group",
    "local_path",
    "mirrorlist_urls",
    "proxy_url",
    "read_repofile",
    "repofile_paths",
    "root_sandbox",
    "split_userinfo",
    "tree_ids",
]
