"""manifest.json: what a build produced (packages, files with sizes and sha256).

Deterministic: keys and lists sorted, no timestamps unless the caller puts one in
`extra`, so two identical builds give byte-identical manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from composer.images.sparse import allocated_size
from composer.run import LOCK_MARKER

MANIFEST_NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_records(outdir: Path) -> list[dict[str, Any]]:
    """One record per regular file or symlink under outdir (symlinks not followed)."""
    records: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(outdir):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            p = Path(dirpath, name)
            rel = p.relative_to(outdir).as_posix()
            if rel in (MANIFEST_NAME, LOCK_MARKER):
                continue
            if p.is_symlink():
                records.append({"path": rel, "symlink": os.readlink(p)})
            elif p.is_file():
                records.append(
                    {
                        "path": rel,
                        "size": p.stat().st_size,
                        "allocated": allocated_size(p),
                        "sha256": sha256_file(p),
                    }
                )
    records.sort(key=lambda r: r["path"])
    return records


def write_manifest(outdir: Path, packages: list[str], extra: dict[str, Any]) -> Path:
    """Write outdir/manifest.json (atomically) and return its path.

    `extra` (build options, sizes, timings...) goes in at the top level; it may not
    reuse the keys "packages" or "files".
    """
    clash = {"packages", "files"} & extra.keys()
    if clash:
        raise ValueError(f"manifest: extra may not set {sorted(clash)}")
    doc = {**extra, "packages": sorted(set(packages)), "files": file_records(outdir)}
    dest = outdir / MANIFEST_NAME
    tmp = outdir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, dest)
    return dest
