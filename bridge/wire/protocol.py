"""The GenLCA wire protocol: operations, message schemas and array contracts.

Shared by the Blender add-on (DEALER) and the backend (ROUTER). Pure Python + numpy: never torch, never
bpy. The protocol version is independent of the package version and changes only when the wire changes.

A message is a list of ZeroMQ frames:  [header, array_0, array_1, ...]
  header: msgpack map {"v": PROTOCOL_VERSION, "id": str, "op" | "kind": str, ..., "arrays": [spec...]}
  spec:   {"name": str, "dtype": str (numpy, little-endian, e.g. "<f4"), "shape": [int, ...]}
  array_i: the raw C-contiguous bytes of spec i, nbytes == prod(shape) * itemsize (checked).

Requests carry "op"; replies carry "kind" and the "id" of the request they answer.

Conventions on the wire (docs/ARCHITECTURE.md): metres, right-handed Z-up; quaternions (w, x, y, z);
Gaussian scales as log, opacity as logit; cameras in OpenCV convention (x right, y down, z forward) as
world-to-camera 4x4 and intrinsics 3x3 in pixels; poses as per-joint local rotations relative to the
rest pose, expressed in each bone's rest frame (Blender's pose-bone `rotation_quaternion`), plus a root
translation in avatar space.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

PROTOCOL_VERSION = 1

# Request operations.
OPS = ("hello", "ping", "generate", "edit", "get_avatar", "render", "export", "cancel")
# Reply kinds. "heartbeat" is sent by the server to a client with a job in flight, so the client can
# tell a slow job from a dead server.
REPLY_KINDS = ("accepted", "progress", "result", "error", "heartbeat")
# Reply fields (docs/PROTOCOL.md): accepted {queue_position}; progress {stage, step, total, ...};
# error {code, message}; heartbeat {id: "", jobs: [ids of this client's queued/running jobs]}.
# Built-in results: hello {protocol, server, capabilities, curve, limits}; ping {time};
# cancel {target, found} (the cancelled request itself ends with error "cancelled").

# Error codes in `error` replies.
E_BAD_MESSAGE = "bad_message"      # not a valid frame list / msgpack / header
E_BAD_VERSION = "bad_version"      # header "v" differs from PROTOCOL_VERSION
E_UNKNOWN_OP = "unknown_op"
E_BAD_ARRAY = "bad_array"          # dtype/shape/bytes mismatch, missing or unexpected array
E_INVALID = "invalid_argument"     # a field has the wrong type or value
E_TOO_LARGE = "too_large"          # message exceeds the size limit
E_QUEUE_FULL = "queue_full"
E_NOT_FOUND = "not_found"          # unknown avatar or job id
E_CANCELLED = "cancelled"
E_TIMEOUT = "timeout"              # client side: no reply within the timeout
E_INTERNAL = "internal"            # a bug on the server; the message says what failed
# Resource limits (backend ServiceConfig); each refusal happens before the job is queued.
E_OVER_BUDGET = "over_budget"      # the queued requests' bytes would pass the server's byte budget; retry later
E_CLIENT_QUOTA = "client_quota"    # this client already has its share of the queue in flight
E_TOO_COSTLY = "too_costly"        # the job's cost (render: pixels x frames) is above the per-job limit
E_SHUTTING_DOWN = "shutting_down"  # the server is stopping: queued and running jobs end with this
ERROR_CODES = (E_BAD_MESSAGE, E_BAD_VERSION, E_UNKNOWN_OP, E_BAD_ARRAY, E_INVALID, E_TOO_LARGE,
               E_QUEUE_FULL, E_NOT_FOUND, E_CANCELLED, E_TIMEOUT, E_INTERNAL, E_OVER_BUDGET, E_CLIENT_QUOTA,
               E_TOO_COSTLY, E_SHUTTING_DOWN)

# Arrays of a rigged avatar (get_avatar result). N Gaussians, S SH coefficients, k <= 8, J joints.
AVATAR_ARRAYS: dict[str, tuple[str, str]] = {
    # name:            (dtype, shape pattern)
    "means":           ("<f4", "N,3"),     # avatar (rest) space, metres, Z-up
    "rotations":       ("<f4", "N,4"),     # wxyz unit quaternions
    "log_scales":      ("<f4", "N,3"),
    "opacity_logits":  ("<f4", "N"),
    "sh":              ("<f4", "N,S,3"),   # sh[:, 0] is the DC term
    "skin_indices":    ("<u2", "N,k"),     # top-k joints per Gaussian
    "skin_weights":    ("<f4", "N,k"),     # rows sum to 1
    "joint_parents":   ("<i4", "J"),       # -1 for the root
    "rest_matrices":   ("<f4", "J,4,4"),   # bone rest frames in avatar space (Blender bone axes: +Y along the bone)
    "joint_tails":     ("<f4", "J,3"),     # bone tail positions in avatar space (heads are rest_matrices[:, :3, 3])
}
# Header fields of the get_avatar result besides the arrays: "avatar_id", "joint_names" (list of J
# str), "meta" (dict: template, generator, prompt, seed, ...).

# Arrays of a render request. F frames.
RENDER_ARRAYS: dict[str, tuple[str, str]] = {
    "joint_rotations":   ("<f4", "F,J,4"),   # wxyz, local, relative to rest, in the bone's rest frame
    "root_translations": ("<f4", "F,3"),     # avatar space, metres
    "world_to_camera":   ("<f4", "F,4,4"),   # OpenCV camera convention
    "intrinsics":        ("<f4", "F,3,3"),   # pixels
}
# Optional arrays of a render request: the rest of each pose bone's transform, for an avatar whose skeleton
# is fitted to another armature's proportions (binding with "Fit Proportions"). Local pose of joint j:
# T(joint_locations[j]) · rotation · joint_scales[j], as Blender's PoseBone location / rotation / uniform
# scale; the root's location composes with root_translations. The backend refuses NaN, inf and scales <= 0.
RENDER_POSE_ARRAYS: dict[str, tuple[str, str]] = {
    "joint_locations":   ("<f4", "F,J,3"),   # metres, in the bone's rest frame (scaled by its parent's scale)
    "joint_scales":      ("<f4", "F,J"),     # uniform, > 0; 1 keeps the avatar's own proportions
}
# The arrays each request op may carry: (dtype, shape pattern) as in bridge.wire.codec.check_array. The server
# refuses, before queueing, any array an op does not declare (bad_array): a request cannot make the
# backend hold bytes it will never use. Ops not listed here (benchmark/test ops) are not checked.
IMAGE_ARRAY: dict[str, tuple[str, str]] = {"image": ("|u1", "H,W,3")}   # sRGB
REQUEST_ARRAYS: dict[str, dict[str, tuple[str, str]]] = {
    "hello": {}, "ping": {}, "cancel": {}, "edit": {}, "get_avatar": {}, "export": {},
    "generate": IMAGE_ARRAY, "render": {**RENDER_ARRAYS, **RENDER_POSE_ARRAYS},
}
OPTIONAL_ARRAYS: dict[str, frozenset[str]] = {"generate": frozenset({"image"}), "render": frozenset(RENDER_POSE_ARRAYS)}

# Each rendered frame streams back as a `progress` reply with stage "frame", fields "frame" (index),
# and one array "rgba" (H, W, 4) uint8 (straight alpha, sRGB). The final `result` has "frames": F.


@dataclasses.dataclass
class Request:
    """Base of all requests. Subclasses list their header fields; arrays travel separately."""

    op: ClassVar[str] = ""
    id: str = ""

    def header_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "id"}


@dataclasses.dataclass
class Hello(Request):
    op: ClassVar[str] = "hello"
    client: str = ""


@dataclasses.dataclass
class Ping(Request):
    op: ClassVar[str] = "ping"


@dataclasses.dataclass
class Sampled(Request):
    """Base of the requests that run the flow sampler (generate, edit): one set of sampler defaults."""

    seed: int = 0
    steps: int = 32
    guidance: float = 4.0


@dataclasses.dataclass
class Generate(Sampled):
    """Text and/or image to avatar. Optional array "image": (H, W, 3) uint8 sRGB."""

    op: ClassVar[str] = "generate"
    prompt: str = ""


@dataclasses.dataclass
class Edit(Sampled):
    """Edit an existing avatar: a new prompt at `strength` in (0, 1], or regenerate `region`."""

    op: ClassVar[str] = "edit"
    avatar_id: str = ""
    prompt: str = ""
    strength: float = 0.6
    region: str = ""           # "" (whole body), AUTO_REGION (what the prompt changes) or one of BODY_REGIONS
    invert: bool = False       # text edit only: reach t = strength along the ODE, not by seeded noise

    def header_fields(self) -> dict[str, Any]:
        # invert is sent only when set, so a noise or region edit still reaches a server from before the field
        fields = super().header_fields()
        if not self.invert:
            del fields["invert"]
        return fields


@dataclasses.dataclass
class GetAvatar(Request):
    op: ClassVar[str] = "get_avatar"
    avatar_id: str = ""


@dataclasses.dataclass
class Render(Request):
    """Render an avatar under per-frame poses and cameras; arrays per RENDER_ARRAYS."""

    op: ClassVar[str] = "render"
    avatar_id: str = ""
    width: int = 512
    height: int = 512
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclasses.dataclass
class Export(Request):
    """Export an avatar file; the result carries one uint8 array "file" and a "filename"."""

    op: ClassVar[str] = "export"
    avatar_id: str = ""
    format: str = "ply"        # "ply" | "safetensors"


@dataclasses.dataclass
class Cancel(Request):
    op: ClassVar[str] = "cancel"
    target: str = ""           # id of the request to cancel


REQUEST_TYPES: dict[str, type[Request]] = {
    cls.op: cls for cls in (Hello, Ping, Generate, Edit, GetAvatar, Render, Export, Cancel)
}
assert tuple(REQUEST_TYPES) == OPS

BODY_REGIONS = ("head", "torso", "arms", "legs", "hands", "feet")
AUTO_REGION = "auto"  # Edit.region: inpaint the texels the new prompt changes against the source's caption
EXPORT_FORMATS = ("ply", "safetensors")
