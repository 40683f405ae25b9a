import io
import struct
import zlib

import numpy as np
import open_clip
import pytest
from PIL import Image

from raylens.data.images import OPENAI_STD, BadImage, ClipPreprocess, decode_image


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("hw", [(64, 64), (50, 80), (97, 41)])
def test_preprocess_matches_open_clip(hw):
    """ClipPreprocess resizes with torch's uint8 kernel, open_clip with PIL's: a smooth image (as
    photos are) comes out within one grey level; on noise (the worst case: PIL clips the bicubic
    overshoot between its passes) 98% of values still are, and the mean barely moves."""
    step = 1 / 255 / min(OPENAI_STD)
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    smooth = np.stack([yy * 255 // hw[0], xx * 255 // hw[1], (yy + xx) * 127 // max(hw)], -1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    for arr, within in ((smooth, 1.0), (noise, 0.98)):
        ours = ClipPreprocess(32)(arr)
        ref = open_clip.image_transform(32, is_train=False)(Image.fromarray(arr)).numpy()
        assert ours.shape == ref.shape == (3, 32, 32) and ours.flags.c_contiguous
        assert (np.abs(ours - ref) <= step * 1.01).mean() >= within
        assert abs(ours.mean() - ref.mean()) < step / 10


def test_decode_roundtrip_and_greyscale():
    arr = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert np.array_equal(decode_image(_png(arr)), arr)
    grey = decode_image(_png(np.full((5, 6), 7, np.uint8)))
    assert grey.shape == (5, 6, 3) and (grey == 7).all()


def test_decode_applies_the_exif_orientation():
    """A phone photo stored landscape with Orientation=6 ("rotate 90 clockwise to view") comes back portrait."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", exif=exif, quality=95)
    upright = decode_image(buf.getvalue())
    assert upright.shape == (40, 20, 3)
    assert upright[:8].mean() > 200 and upright[-8:].mean() < 50  # the left band is now on top
    assert decode_image(_png(stored)).shape == (20, 40, 3)  # no EXIF: stored as is


def test_16_bit_grey_keeps_its_high_byte():
    """Pillow's own RGB clips 16-bit grey at 255 (mid-grey came out white); decode_image scales it."""
    grey = np.array([[0, 256, 32768, 65535]], np.uint16)
    assert decode_image(_png(grey)).tolist() == [[[v] * 3 for v in (0, 1, 128, 255)]]
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="TIFF")
    assert decode_image(buf.getvalue())[0, :, 0].tolist() == [0, 1, 128, 255]


def test_png_damage_under_a_mended_crc_is_refused():
    """A flipped byte in a PNG's image data is refused with its CRC left stale and with it mended (then
    only zlib's own checks see it)."""
    for content in ("gradient", "noise"):  # a Huffman-coded stream, and stored blocks (only Adler-32 sees a flip)
        yy, xx = np.mgrid[0:32, 0:32]
        pixels = np.stack([yy * 8, xx * 8, (yy + xx) * 4], -1).astype(np.uint8)
        if content == "noise":
            pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        data = bytearray(_png(pixels))
        at = data.index(b"IDAT")
        length = int.from_bytes(data[at - 4 : at], "big")
        data[at + 4 + length // 2] ^= 0xFF
        with pytest.raises(BadImage, match="corrupt or truncated"):
            decode_image(bytes(data))
        data[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(data[at : at + 4 + length]))
        with pytest.raises(BadImage, match="corrupt or truncated"):
            decode_image(bytes(data))


def test_decode_errors_name_the_reason():
    with pytest.raises(BadImage, match="empty file"):
        decode_image(b"")
    with pytest.raises(BadImage, match="not a readable image"):
        decode_image(b"this is a text file, not a picture")
    data = _png(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(BadImage, match="over the limit"):
        decode_image(data, max_pixels=100)
    with pytest.raises(TypeError):
        decode_image("path.png")


def test_preprocess_validates():
    with pytest.raises(ValueError, match="image_size"):
        ClipPreprocess(0)
    with pytest.raises(ValueError, match="uint8"):
        ClipPreprocess(8)(np.zeros((8, 8, 3), np.float32))


def test_read_image_file_refuses_devices_fifos_and_huge_files(tmp_path):
    import os

    from raylens.data.images import read_image_file

    with pytest.raises(BadImage, match="not a regular file"):
        read_image_file("/dev/zero")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(BadImage, match="not a regular file"):
        read_image_file(fifo)  # no writer: refused at once, not waited on
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 2000)
    with pytest.raises(BadImage, match="over the file limit of 1000"):
        read_image_file(big, max_bytes=1000)
    assert read_image_file(big) == big.read_bytes()
    with pytest.raises(FileNotFoundError):
        read_image_file(tmp_path / "missing.png")


def test_read_image_file_can_be_confined_to_the_dataset_root(tmp_path):
    """``root``: only files inside the dataset root are read; ``../``, absolute paths elsewhere and
    symbolic links pointing out are refused with the reason, and files inside still read."""
    import os

    from raylens.data.images import read_image_file

    root, outside = tmp_path / "data", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.png").write_bytes(b"inside")
    (outside / "b.png").write_bytes(b"outside")
    os.symlink(outside / "b.png", root / "link.png")
    os.symlink(root / "sub" / "a.png", root / "ok_link.png")  # a link that stays inside is fine
    assert read_image_file(root / "sub" / "a.png", root=root) == b"inside"
    assert read_image_file(root / "ok_link.png", root=root) == b"inside"
    for bad in (root / ".." / "secret" / "b.png", outside / "b.png", root / "link.png", root, "/etc/hostname"):
        with pytest.raises(BadImage, match="outside the dataset root"):
            read_image_file(bad, root=root)
    assert read_image_file(root / "link.png") == b"outside"  # no root: any regular file, as before


def test_decoded_batches_skip_rows_outside_the_root(tmp_path):
    from raylens.data.decode import decode_captioned_batch

    root = tmp_path / "data"
    root.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    (root / "in.png").write_bytes(buf.getvalue())
    (tmp_path / "out.png").write_bytes(buf.getvalue())
    batch = {
        "path": np.asarray([str(root / "in.png"), str(tmp_path / "out.png")]),
        "caption": np.asarray(["a red square", "a red square"]),
    }
    pre = ClipPreprocess(16)
    out, skipped = decode_captioned_batch(dict(batch), pre, root=str(root))
    assert list(out["path"]) == [str(root / "in.png")] and out["image"].shape == (1, 3, 16, 16)
    assert [(s.path, s.reason) for s in skipped] == [
        (str(tmp_path / "out.png"), f"outside the dataset root {str(root)!r} (image_root confines reads to it)")
    ]
    out, skipped = decode_captioned_batch(dict(batch), pre)
    assert len(out["path"]) == 2 and not skipped
