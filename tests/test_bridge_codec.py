"""bridge.wire.codec: frames <-> (header, arrays), request parsing and array contracts (no sockets here)."""
from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.wire import protocol
from bridge.wire.codec import (WIRE_DTYPES, ProtocolError, check_array, check_arrays, decode, encode,
                          request_from_header, request_header)

HEADER = {"v": protocol.PROTOCOL_VERSION, "id": "r1", "op": "ping"}


def frames_as_bytes(frames):
    return [bytes(f) for f in frames]


@pytest.mark.parametrize("dtype", sorted({d.str for d in WIRE_DTYPES.values()}))
def test_every_wire_dtype_round_trips_bit_exact(dtype):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(7, 5, 3) if dtype != "|b1" else (7, 5, 3), dtype=np.uint8)
    itemsize = np.dtype(dtype).itemsize
    raw = rng.integers(0, 256, size=(7, 5, 3 * itemsize), dtype=np.uint8)
    a = raw.view(dtype) if dtype != "|b1" else raw.astype(bool)
    header, arrays = decode(frames_as_bytes(encode(HEADER, {"a": a})))
    assert header == HEADER
    b = arrays["a"]
    assert b.dtype == a.dtype and b.shape == a.shape
    assert b.tobytes() == a.tobytes()


def test_encode_is_zero_copy_for_contiguous_little_endian_and_decode_is_a_view():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = encode(HEADER, {"a": a})
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.uint8), a)
    header, arrays = decode(frames)
    assert np.shares_memory(arrays["a"], a) and not arrays["a"].flags.writeable


def test_encode_converts_big_endian_and_non_contiguous_once():
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    b = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    header, arrays = decode(frames_as_bytes(encode(HEADER, {"a": a, "b": b})))
    assert arrays["a"].dtype.str == "<f4" and np.array_equal(arrays["a"], a)
    assert arrays["b"].flags.c_contiguous and np.array_equal(arrays["b"], b)


def test_empty_and_zero_dim_arrays():
    header, arrays = decode(frames_as_bytes(encode(HEADER, {"e": np.zeros((0, 3), np.float32),
                                                           "s": np.float64(2.5)})))
    assert arrays["e"].shape == (0, 3) and arrays["s"].shape == () and arrays["s"] == 2.5


def test_encode_refuses_dtypes_outside_the_allow_list():
    for bad in (np.array(["x"]), np.array([1 + 2j]), np.array([object()], dtype=object)):
        with pytest.raises(ProtocolError) as e:
            encode(HEADER, {"a": bad})
        assert e.value.code == protocol.E_BAD_ARRAY and "'a'" in e.value.message


def test_byte_length_mismatch_names_array_dtype_and_shape():
    frames = frames_as_bytes(encode(HEADER, {"means": np.zeros((100000, 3), np.float32)}))
    frames[1] = frames[1][:-4]
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    assert e.value.code == protocol.E_BAD_ARRAY and e.value.request_id == "r1"
    assert e.value.message == "array 'means': expected 1200000 bytes for float32 (100000, 3), got 1199996"


@pytest.mark.parametrize("header,code,words", [
    ({"id": "x", "op": "ping"}, protocol.E_BAD_MESSAGE, "'v'"),
    ({"v": 99, "id": "x", "op": "ping"}, protocol.E_BAD_VERSION, "99"),
    ({"v": True, "id": "x", "op": "ping"}, protocol.E_BAD_VERSION, "True"),
    ({"v": 1, "id": 5, "op": "ping"}, protocol.E_BAD_MESSAGE, "'id'"),
    ({"v": 1, "id": "x"}, protocol.E_BAD_MESSAGE, "neither"),
    ({"v": 1, "id": "x", "op": 3}, protocol.E_BAD_MESSAGE, "'op'"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": {}}, protocol.E_BAD_ARRAY, "'arrays'"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "a", "dtype": "<c8", "shape": [1]}]},
     protocol.E_BAD_ARRAY, "'<c8'"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "a", "dtype": ">f4", "shape": [1]}]},
     protocol.E_BAD_ARRAY, "'>f4'"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "a", "dtype": "<f4", "shape": [-1]}]},
     protocol.E_BAD_ARRAY, "non-negative"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "a", "dtype": "<f4", "shape": [1.5]}]},
     protocol.E_BAD_ARRAY, "shape"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "", "dtype": "<f4", "shape": [1]}]},
     protocol.E_BAD_ARRAY, "name"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "a", "dtype": "<f4", "shape": [1], "x": 1}]},
     protocol.E_BAD_ARRAY, "exactly"),
    ({"v": 1, "id": "x", "op": "ping", "arrays": [{"name": "a", "dtype": "<f4", "shape": [1]}]},
     protocol.E_BAD_ARRAY, "1 arrays but 0 array frames"),
])
def test_bad_headers_raise_protocol_errors_that_name_the_problem(header, code, words):
    with pytest.raises(ProtocolError) as e:
        decode([msgpack.packb(header)])
    assert e.value.code == code and words in e.value.message


def test_not_a_map_not_msgpack_ext_types_and_size_limit():
    for frame, code in ((msgpack.packb([1, 2]), protocol.E_BAD_MESSAGE), (b"\xc1", protocol.E_BAD_MESSAGE),
                        (msgpack.packb({"v": 1, "id": "x", "op": "ping", "t": msgpack.ExtType(5, b"ab")}),
                         protocol.E_BAD_MESSAGE),
                        (msgpack.packb({"v": 1, "id": "x", "op": "ping", 1: 2}), protocol.E_BAD_MESSAGE)):
        with pytest.raises(ProtocolError) as e:
            decode([frame])
        assert e.value.code == code
    with pytest.raises(ProtocolError) as e:
        decode(frames_as_bytes(encode(HEADER, {"a": np.zeros(1000, np.uint8)})), max_bytes=500)
    assert e.value.code == protocol.E_TOO_LARGE and "limit is 500" in e.value.message and e.value.request_id == "r1"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_decode_of_arbitrary_bytes_raises_only_protocol_errors(frames):
    try:
        decode(frames)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
    # a random frame list may, very rarely, be a valid message: then there is nothing to check


plain = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
                     | st.binary(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                     max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "id", "op", "kind", "arrays", "x"]), plain, max_size=6),
       st.lists(st.binary(max_size=16), max_size=3))
def test_decode_of_arbitrary_msgpack_maps_raises_only_protocol_errors(header, extra):
    try:
        decode([msgpack.packb(header), *extra])
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES


# ------------------------------------------------------------------------------------------ requests
EXAMPLES = [
    protocol.Hello(id="a", client="blender 5.0"), protocol.Ping(id="b"),
    protocol.Generate(id="c", prompt="a sailor", seed=3, steps=8, guidance=2.5),
    protocol.Edit(id="d", avatar_id="av", prompt="red coat", strength=0.4, region="torso", seed=1, steps=4),
    protocol.Edit(id="d2", avatar_id="av", prompt="red coat", strength=0.9, invert=True),
    protocol.GetAvatar(id="e", avatar_id="av"),
    protocol.Render(id="f", avatar_id="av", width=64, height=32, background=(1.0, 0.5, 0.0)),
    protocol.Export(id="g", avatar_id="av", format="safetensors"), protocol.Cancel(id="h", target="c"),
]


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: r.op)
def test_every_request_type_round_trips_through_frames(request_):
    header, _ = decode(frames_as_bytes(encode(request_header(request_))))
    assert request_from_header(header) == request_
    assert set(protocol.REQUEST_TYPES) == {r.op for r in EXAMPLES}


def test_request_fields_are_type_checked_by_name():
    base = {"v": 1, "id": "x", "op": "generate"}
    for field, value in (("steps", "8"), ("steps", 8.0), ("steps", True), ("prompt", 3), ("guidance", "high")):
        with pytest.raises(ProtocolError) as e:
            request_from_header({**base, field: value})
        assert e.value.code == protocol.E_INVALID and repr(field) in e.value.message and e.value.request_id == "x"
    with pytest.raises(ProtocolError) as e:
        request_from_header({**base, "op": "render", "background": [1.0, 2.0]})
    assert "'background'" in e.value.message and "list of 3" in e.value.message
    with pytest.raises(ProtocolError) as e:
        request_from_header({**base, "promt": "typo"})
    assert e.value.code == protocol.E_INVALID and "promt" in e.value.message
    with pytest.raises(ProtocolError) as e:
        request_from_header({**base, "op": "fly"})
    assert e.value.code == protocol.E_UNKNOWN_OP and "'fly'" in e.value.message
    assert request_from_header({**base, "guidance": 3}).guidance == 3.0  # ints are fine for floats


def test_edit_invert_is_a_strict_bool_that_old_clients_may_omit():
    base = {"v": 1, "id": "x", "op": "edit", "avatar_id": "av", "prompt": "red coat"}
    assert request_from_header(base).invert is False  # a header from before the field existed
    assert request_from_header({**base, "invert": True}).invert is True
    # and a client sends it only when set, so its noise and region edits still reach a server without the field
    assert "invert" not in request_header(protocol.Edit(avatar_id="av", prompt="red coat"))
    assert request_header(protocol.Edit(avatar_id="av", prompt="red coat", invert=True))["invert"] is True
    for value in (1, 0, "true", None, 1.0):
        with pytest.raises(ProtocolError) as e:
            request_from_header({**base, "invert": value})
        assert e.value.code == protocol.E_INVALID and "'invert'" in e.value.message and "a bool" in e.value.message


def test_custom_request_types():
    @dataclasses.dataclass
    class Echo(protocol.Request):
        op = "echo"
        scale: float = 1.0

    header, _ = decode(frames_as_bytes(encode(request_header(Echo(id="z", scale=2.0)))))
    assert request_from_header(header, {"echo": Echo}) == Echo(id="z", scale=2.0)


# ------------------------------------------------------------------------------------------ array contracts
def test_check_arrays_binds_dimensions_across_arrays():
    f, j = 5, 7
    arrays = {"joint_rotations": np.zeros((f, j, 4), np.float32), "root_translations": np.zeros((f, 3), np.float32),
              "world_to_camera": np.zeros((f, 4, 4), np.float32), "intrinsics": np.zeros((f, 3, 3), np.float32)}
    assert check_arrays(arrays, protocol.RENDER_ARRAYS) == {"F": f, "J": j}
    bad = dict(arrays, intrinsics=np.zeros((f + 1, 3, 3), np.float32))
    with pytest.raises(ProtocolError) as e:
        check_arrays(bad, protocol.RENDER_ARRAYS)
    assert "'intrinsics'" in e.value.message and "F = 5" in e.value.message
    with pytest.raises(ProtocolError) as e:
        check_arrays(dict(arrays, world_to_camera=np.zeros((f, 4, 4))), protocol.RENDER_ARRAYS)
    assert "expected dtype <f4, got <f8" in e.value.message
    with pytest.raises(ProtocolError) as e:
        check_arrays({k: v for k, v in arrays.items() if k != "intrinsics"}, protocol.RENDER_ARRAYS)
    assert "missing array 'intrinsics'" in e.value.message
    with pytest.raises(ProtocolError) as e:
        check_arrays(dict(arrays, extra=np.zeros(1)), protocol.RENDER_ARRAYS)
    assert "unexpected" in e.value.message and "extra" in e.value.message
    with pytest.raises(ProtocolError) as e:
        check_array({"m": np.zeros((4, 2), np.float32)}, "m", "<f4", "N,3")
    assert "axis 1 must be 3" in e.value.message


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**62, 2**62], [2**40, 0, 2**20]])
def test_overflowing_shapes_with_empty_frames_are_bad_arrays(shape):
    header = msgpack.packb({"v": 1, "id": "r1", "op": "ping",
                            "arrays": [{"name": "x", "dtype": "<f8", "shape": shape}]})
    with pytest.raises(ProtocolError) as e:
        decode([header, b""])
    assert e.value.code == protocol.E_BAD_ARRAY and e.value.request_id == "r1" and "'x'" in e.value.message


def test_too_large_keeps_the_request_id_when_it_is_readable():
    big_header = msgpack.packb({"v": 1, "id": "r2", "op": "ping", "pad": "x" * (2 << 20)})
    for frames, limit in (([big_header], 1 << 30), ([msgpack.packb({"v": 1, "id": "r3", "op": "ping"}), b"x" * 64], 32)):
        with pytest.raises(ProtocolError) as e:
            decode(frames, max_bytes=limit)
        assert e.value.code == protocol.E_TOO_LARGE and e.value.request_id in ("r2", "r3")


def test_every_request_op_declares_its_arrays():
    assert set(protocol.REQUEST_ARRAYS) == set(protocol.OPS)
    assert set(protocol.REQUEST_ARRAYS["render"]) == set(protocol.RENDER_ARRAYS) | set(protocol.RENDER_POSE_ARRAYS)
    assert protocol.OPTIONAL_ARRAYS["generate"] == {"image"}
    assert protocol.OPTIONAL_ARRAYS["render"] == set(protocol.RENDER_POSE_ARRAYS)
