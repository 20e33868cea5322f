"""file_sha256: the digest of the bytes, read across chunk boundaries."""

import hashlib

import pytest

from edgeadapt.formats import digest


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64])
def test_file_sha256_is_the_digest_of_the_bytes(tmp_path, monkeypatch, size):
    monkeypatch.setattr(digest, "_CHUNK", 8)  # small chunks: the boundaries get crossed
    data = bytes(range(size))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert digest.file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert digest.file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_file_sha256_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        digest.file_sha256(tmp_path / "absent")
