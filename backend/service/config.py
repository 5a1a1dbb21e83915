"""Every setting of the backend service, in one dataclass: `genlca-backend serve --config FILE.yaml` reads
it (backend/config.py: unknown keys are errors that name the path), `--set key=value` overrides one field,
and the command-line flags (--bind, --keys-dir, --queue-size, --max-message-mb, --heartbeat-s,
--avatar-dir, --no-persist) override the file.

    model: /models/studio-v2
    device: cuda
    bind: tcp://0.0.0.0:5555
    keys_dir: /etc/genlca/keys
    queue_size: 32
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from bridge.wire import protocol
from bridge.wire.codec import ProtocolError
from bridge.wire.contract import check_range
from bridge.wire.protocol import Request


def _mib_to_bytes(mib: float) -> int:
    return int(mib * (1 << 20))


@dataclasses.dataclass
class ServiceConfig:
    """What the backend serves and the bounds it keeps (docs/ARCHITECTURE.md, "Where each setting lives")."""

    # the model
    model: str = "default"         # a model package under checkpoints/, a folder, or a dit .safetensors
    text_encoder: str = ""         # "" = the checkpoint's own; else "minilm", "hashing" or a folder
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the socket and the avatars (flags: --bind, --keys-dir, --avatar-dir, --no-persist)
    bind: str = "tcp://127.0.0.1:5555"   # ZeroMQ endpoint; off loopback it needs keys_dir
    keys_dir: str = ""             # folder with server.key_secret (CURVE) and authorized_clients/; "" = none
    avatar_dir: str = ""           # "" = $GENLCA_AVATAR_DIR, else ~/.cache/genlca/avatars
    persist: bool = True           # False: avatars in memory only
    # the server (flags: --queue-size, --max-message-mb, --heartbeat-s)
    queue_size: int = 16           # jobs waiting at most
    max_message_mb: float = 64.0   # largest request accepted, MiB: the largest legal one is generate with a
    #                                 4096^2 photo (48 MiB); libzmq drops a connection that sends more
    max_inbound_mb: float = 512.0  # unfinished requests of all connections (half-received, not yet taken)
    heartbeat_s: float = 1.0       # heartbeat interval to clients with jobs
    client_timeout_s: float = 30.0  # a client silent this long while it has jobs is gone
    # Bounds on what clients can make the backend hold or do (docs/ARCHITECTURE.md, "Threat model").
    max_render_pixels: int = 2048 * 2048
    max_frames: int = 2000
    max_steps: int = 200            # sampler steps one generate/edit may ask for
    max_render_cost: int = 1024 * 1024 * 1000   # width x height x frames of one render job
    max_image_pixels: int = 4096 * 4096         # generate's reference image
    max_queued_mb: float = 2048.0               # bytes of all queued and running requests
    max_client_jobs: int = 8                    # jobs one client may have queued or running
    send_hwm: int = 256                         # replies waiting for one client before it counts as not reading
    max_unread_reply_mb: float = 64.0           # reply bytes one client has not read before its jobs end
    # The renderer's own cost unit: Gaussian-tile pairs of one frame (backend.render.frame_cost). A body
    # filling a 2048^2 frame makes ~1e6; a camera 3 cm from a body shrunk to 2 cm at 2048^2, 4e8.
    max_render_tile_pairs: int = 1 << 25        # per frame; counted before the frame is rasterised (too_costly)
    render_block_pairs: int = 1 << 22           # pairs listed at once (~32 bytes each): the CPU twin's memory

    def __post_init__(self) -> None:
        for name in ("max_render_pixels", "max_frames", "max_steps", "max_render_cost", "max_image_pixels",
                     "max_queued_mb", "max_client_jobs", "send_hwm", "queue_size", "max_message_mb", "heartbeat_s",
                     "client_timeout_s", "max_render_tile_pairs", "render_block_pairs", "max_inbound_mb",
                     "max_unread_reply_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    # the MiB settings in bytes, as the server takes them (properties, not fields: no config file sets them)
    max_message_bytes = property(lambda self: _mib_to_bytes(self.max_message_mb))
    max_unread_reply_bytes = property(lambda self: _mib_to_bytes(self.max_unread_reply_mb))
    max_inbound_bytes = property(lambda self: _mib_to_bytes(self.max_inbound_mb))
    max_queued_bytes = property(lambda self: _mib_to_bytes(self.max_queued_mb))

    def check_request(self, request: Request, arrays: dict[str, np.ndarray]) -> None:
        """Per-job cost limits, checked by the server before a job is queued (BackendServer admission).
        Raises bridge.wire.codec.ProtocolError with too_costly / too_large / invalid_argument."""
        if isinstance(request, protocol.Render):
            rotations = arrays.get("joint_rotations")
            frames = int(rotations.shape[0]) if rotations is not None and rotations.ndim >= 1 else 0
            check_render_size(request.width, request.height, self.max_render_pixels)
            cost = request.width * request.height * frames
            if cost > self.max_render_cost:
                raise ProtocolError(protocol.E_TOO_COSTLY, f"render of {frames} frames at {request.width}x"
                                    f"{request.height} is {cost} pixel-frames, the limit per job is "
                                    f"{self.max_render_cost}; render fewer frames or smaller")
            for name, a in arrays.items():   # named as the handler names it (bad_array), before the ranges
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise ProtocolError(protocol.E_BAD_ARRAY, f"{name} contains NaN or inf")
            try:
                check_pose_ranges(arrays, request.width, request.height)
            except ValueError as exc:
                raise ProtocolError(protocol.E_INVALID, str(exc)) from None
        elif isinstance(request, protocol.Generate) and "image" in arrays:
            image = arrays["image"]
            pixels = int(np.prod(image.shape[:2])) if image.ndim >= 2 else 0
            if pixels > self.max_image_pixels:
                raise ProtocolError(protocol.E_TOO_LARGE, f"reference image of {image.shape[1]}x{image.shape[0]} "
                                    f"pixels is above the limit of {self.max_image_pixels} pixels")


def check_render_size(width: int, height: int, max_pixels: int) -> None:
    """A render's frame size: each side in 1..MAX_RENDER_SIDE and at most `max_pixels` pixels; else
    ProtocolError(invalid_argument) naming the size and the bound."""
    side = protocol.MAX_RENDER_SIDE
    if not (1 <= width <= side and 1 <= height <= side) or width * height > max_pixels:
        raise ProtocolError(protocol.E_INVALID, f"render size {width}x{height} is out of range (each side "
                            f"1..{side}, at most {max_pixels} pixels)")


# What a real rig and camera produce, with room to spare: a pose or camera outside is a mistake or an attack,
# refused by name (invalid_argument) before float32 overflows into `internal` (issue 24).
MAX_TRANSLATION_M = 1e4          # root_translations, camera positions: 10 km
MAX_BONE_OFFSET_M = 1e3          # joint_locations: a pose bone's offset from its rest head
BONE_SCALE_RANGE = (1e-3, 1e3)   # joint_scales of one bone
CHAIN_SCALE_RANGE = (1e-4, 1e4)  # the product of the scales from the root down to a bone
QUATERNION_NORM_RANGE = (1e-6, 1e6)
MAX_FOCAL_PER_PIXEL = 1e4        # fx / width: a 0.006 degree field of view
MAX_PRINCIPAL_OFFSET = 100.0     # |cx|, |cy| in image sizes (Blender's shift is at most 10)


def check_pose_ranges(arrays: dict[str, np.ndarray], width: int, height: int) -> None:
    """Every pose and camera value of a render request within what a rig produces (the ranges above);
    ValueError naming the array, the first bad element, its value and the range. Arrays that are absent or of
    the wrong shape are skipped (the shape checks name those)."""
    def get(name: str, ndim: int) -> np.ndarray | None:
        a = arrays.get(name)
        return a if a is not None and a.ndim == ndim and a.dtype.kind == "f" else None

    if (q := get("joint_rotations", 3)) is not None and q.shape[-1] == 4:
        check_range(np.linalg.norm(q.astype(np.float64), axis=-1), "joint_rotations", *QUATERNION_NORM_RANGE,
                    what="quaternion norm")
    if (t := get("root_translations", 2)) is not None:
        check_range(t, "root_translations", -MAX_TRANSLATION_M, MAX_TRANSLATION_M, what="metres")
    if (loc := get("joint_locations", 3)) is not None:
        check_range(loc, "joint_locations", -MAX_BONE_OFFSET_M, MAX_BONE_OFFSET_M, what="metres")
    if (s := get("joint_scales", 2)) is not None:
        check_range(s, "joint_scales", *BONE_SCALE_RANGE, what="bone scale")
    if (m := get("world_to_camera", 3)) is not None and m.shape[1:] == (4, 4):
        check_range(m[:, :3, 3], "world_to_camera", -MAX_TRANSLATION_M, MAX_TRANSLATION_M,
                    what="translation in metres")
    if (k := get("intrinsics", 3)) is not None and k.shape[1:] == (3, 3):
        size = np.array([width, height], np.float64)
        focal = np.stack([k[:, 0, 0], k[:, 1, 1]], -1) / size    # (F, 2)
        check_range(focal, "intrinsics", 0.0, MAX_FOCAL_PER_PIXEL, what="fx / width, fy / height",
                    low_inclusive=False)
        centre = np.stack([k[:, 0, 2], k[:, 1, 2]], -1) / size   # (F, 2)
        check_range(centre, "intrinsics", -MAX_PRINCIPAL_OFFSET, MAX_PRINCIPAL_OFFSET,
                    what="cx / width, cy / height")
