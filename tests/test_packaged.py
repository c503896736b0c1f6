"""Packaged assets (miro_runtime/packaged.py), against real installed distributions: the file found
through the install record, the package not imported, pip's recorded digest matching the file on disk,
and every way an asset can be missing named with its install line."""
import hashlib
import subprocess
import sys

import pytest

from miro_runtime.packaged import AssetMissing, package_file, recorded_sha256

LINE = "pip install 'miro-runtime[edge]'"


def test_a_packaged_file_is_found_without_importing_its_package():
    code = ("import sys; from miro_runtime.packaged import package_file; "
            "p = package_file('lmdb', 'lmdb/__init__.py', 'x'); print(p); print('lmdb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("lmdb/__init__.py") and out[1] == "False"
    with open(out[0], "rb") as fh:  # pip's record of the file is the file on disk
        assert recorded_sha256("lmdb", "lmdb/__init__.py") == hashlib.sha256(fh.read()).hexdigest()


def test_a_missing_asset_names_its_package_and_the_install_line():
    with pytest.raises(AssetMissing, match=r"'no-such-dist-xyz', which is not installed: pip install"):
        package_file("no-such-dist-xyz", ".gguf", LINE)
    with pytest.raises(AssetMissing, match=r"lists no file ending in '\.gguf'.*reinstall it: pip install"):
        package_file("lmdb", ".gguf", LINE)
    with pytest.raises(AssetMissing, match=r"files ending in '\.py' \(lmdb/.*name one more exactly"):
        package_file("lmdb", ".py", LINE)
    assert isinstance(AssetMissing("x"), FileNotFoundError)  # what callers already catch for absent files
