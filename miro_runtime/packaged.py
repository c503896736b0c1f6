"""Real weights and data that ship inside installed packages (no hub, nothing downloaded at run time):
where a distribution's file lies, found through its install record without importing the package
(some packages' ``__init__`` imports heavy or absent dependencies), and the digest pip recorded for it.
Standard library only: the engine (backbones) and the KV path (decoders) both read through it."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from importlib import metadata
from typing import Optional


class AssetMissing(FileNotFoundError):
    """A packaged asset that is not installed: the message names the distribution, the file and the
    install line."""


def _dist(dist: str, what: str, install: str) -> metadata.Distribution:
    try:
        return metadata.distribution(dist)
    except metadata.PackageNotFoundError as e:
        raise AssetMissing(f"{what} ships in the Python package {dist!r}, which is not installed: {install}") from e


def package_file(dist: str, suffix: str, install: str) -> str:
    """The absolute path of the one file of distribution ``dist`` whose name ends with ``suffix`` (e.g.
    ``.gguf``); ``install`` is the line that installs it, for the error. The package is not imported."""
    d = _dist(dist, f"a {suffix} file", install)
    hits = [f for f in (d.files or []) if str(f).endswith(suffix)]
    if not hits:
        raise AssetMissing(f"the installed {dist} {d.version} lists no file ending in {suffix!r} in its record; "
                           f"reinstall it: {install}")
    if len(hits) > 1:
        raise AssetMissing(f"the installed {dist} {d.version} lists {len(hits)} files ending in {suffix!r} ("
                           + ", ".join(sorted(str(f) for f in hits)) + "): name one more exactly")
    path = d.locate_file(hits[0])
    if not path.is_file():
        raise AssetMissing(f"{dist} {d.version} records {hits[0]} but {path} is not on disk; reinstall it: {install}")
    return str(path)


def recorded_sha256(dist: str, suffix: str) -> Optional[str]:
    """The SHA-256 (hex) pip recorded for ``dist``'s file ending in ``suffix`` when it installed it (RECORD,
    urlsafe base64 without padding), to check the file against; None when the record holds none."""
    d = metadata.distribution(dist)
    for f in d.files or []:
        if str(f).endswith(suffix) and f.hash is not None and f.hash.mode == "sha256":
            raw = f.hash.value + "=" * (-len(f.hash.value) % 4)
            return base64.urlsafe_b64decode(raw).hex()
    return None


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """The file's SHA-256 (hex), computed once per process for a file unchanged on disk."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def verified_file(dist: str, suffix: str, install: str) -> str:
    """``package_file``, checked against the digest pip recorded when it installed the file: a file
    changed or cut short on disk is refused, with the line that reinstalls it."""
    path = package_file(dist, suffix, install)
    want = recorded_sha256(dist, suffix)
    if want is not None and file_sha256(path) != want:
        raise AssetMissing(f"{path} does not match the SHA-256 {dist} recorded when it was installed (changed or "
                           f"damaged on disk); reinstall it: {install}")
    return path
