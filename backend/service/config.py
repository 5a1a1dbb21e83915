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
from bridge.wire.protocol import Request


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
    max_message_mb: float = 1024.0  # largest message accepted, MiB (libzmq drops the connection above it)
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

    def __post_init__(self) -> None:
        for name in ("max_render_pixels", "max_frames", "max_steps", "max_render_cost", "max_image_pixels",
                     "max_queued_mb", "max_client_jobs", "send_hwm", "queue_size", "max_message_mb", "heartbeat_s",
                     "client_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * (1 << 20))

    @property
    def max_queued_bytes(self) -> int:
        return int(self.max_queued_mb * (1 << 20))

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
