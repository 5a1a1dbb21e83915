"""bridge.files.png against an independent codec: Pillow decodes what we write, we decode what Pillow writes
(its rows use the Sub/Up/Average/Paeth filters our writer never emits), and the chunk CRCs are checked by hand."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bridge.files.png import encode_png, read_png, write_png

MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _image(channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(0, 9, size=(29, 31, channels)), axis=1) % 256   # gives filters a reason
    return np.where(rng.random((29, 31, 1)) < 0.3, rng.integers(0, 256, (29, 31, channels)), smooth).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pillow_decodes_what_we_write(tmp_path, channels):
    image = _image(channels, channels)
    path = write_png(tmp_path / "a.png", image if channels > 1 else image[:, :, 0])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    with Image.open(path) as im:
        assert im.mode == MODES[channels] and im.size == (31, 29)
        np.testing.assert_array_equal(np.asarray(im).reshape(29, 31, channels), image)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_we_decode_what_pillow_writes_with_every_row_filter(tmp_path, channels):
    image = _image(channels, 10 + channels)
    Image.fromarray(image if channels > 1 else image[:, :, 0], MODES[channels]).save(tmp_path / "p.png",
                                                                                     optimize=True)
    np.testing.assert_array_equal(read_png(tmp_path / "p.png"), image)


def test_chunks_carry_valid_crcs_and_the_rows_inflate_to_the_pixels():
    image = _image(3, 7)
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        kinds.append(kind)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(29, 1 + 31 * 3)
    assert (rows[:, 0] == 0).all()  # filter type None on every row
    np.testing.assert_array_equal(rows[:, 1:].reshape(29, 31, 3), image)


def test_png_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(tmp_path / "x.png")
