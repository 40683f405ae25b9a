"""What fuzzing the WebDataset reader found: a corrupt member size field made a caption member
swallow the next members' headers and data, and the sample came out with that binary junk as its
caption (no row skipped). A caption member that is not text is now a skipped sample with the reason."""

from __future__ import annotations

import io
import tarfile

from raylens.data.report import SkippedRow
from raylens.data.webdataset import iter_shard


def _shard(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _set_size(data: bytes, member: str, size: int) -> bytes:
    """Rewrite one member's size field (with a valid header checksum, as a bit flip in the right
    place could leave it)."""
    b = bytearray(data)
    h = next(i for i in range(0, len(b), 512) if b[i : i + 100].rstrip(b"\0") == member.encode())
    b[h + 124 : h + 136] = f"{size:011o}\0".encode()
    b[h + 148 : h + 156] = b" " * 8
    b[h + 148 : h + 156] = f"{sum(b[h : h + 512]):06o}\0 ".encode()
    return bytes(b)


def _items(tmp_path, data: bytes):
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    return list(iter_shard(path))


def test_a_caption_member_that_swallowed_the_next_members_is_a_skipped_sample(tmp_path):
    png = b"\x89PNG fake image bytes"
    members = [("a.png", png), ("a.txt", b"first"), ("b.png", png), ("b.txt", b"second"), ("c.png", png)]
    members.append(("c.txt", b"third"))
    data = _set_size(_shard(members), "a.txt", 512 * 4 + 10)  # a.txt now runs over b.png's header and data
    items = _items(tmp_path, data)
    skipped = [i for i in items if isinstance(i, SkippedRow)]
    captions = [i.caption for i in items if not isinstance(i, SkippedRow)]
    assert all("\0" not in c and "ustar" not in c for c in captions), captions
    assert any(s.path.endswith(":a") and "not text (NUL bytes)" in s.reason for s in skipped), skipped
    assert "third" in captions  # the samples after the damage are still read


def test_a_caption_that_is_not_utf8_is_a_skipped_sample_naming_the_fix(tmp_path):
    items = _items(
        tmp_path, _shard([("k.png", b"img"), ("k.txt", b"caf\xe9 latin-1"), ("m.png", b"i"), ("m.txt", b"ok")])
    )
    skipped = [i for i in items if isinstance(i, SkippedRow)]
    assert [(s.path.rsplit(":", 1)[-1], s.reason.split(" (")[0]) for s in skipped] == [
        ("k", "txt member is not UTF-8 text")
    ]
    assert "writing captions as UTF-8" in skipped[0].reason
    assert [i.caption for i in items if not isinstance(i, SkippedRow)] == ["ok"]
