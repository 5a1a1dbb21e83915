"""An avatar's life after sampling: decode a token map into a stored avatar, find it again, pose and render
it frame by frame, export it as a file. Plain functions over the model bundle and the store; they raise the
domain errors of backend/pipelines/errors.py and know nothing of the wire (the service's handlers check
requests and map the errors).

    record = decode_avatar(bundle, tokens, meta, device)          # rigged Gaussians + skeleton + meta
    record = find_avatar(store, avatar_id)                        # AvatarNotFound if it is not kept
    for rgba in render_frames(record, poses, camera_arrays, width, height, background, device): ...
    data, suffix = export_avatar(record, "ply")
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from backend.avatar.avatar_file import AvatarRecord, save_avatar
from backend.avatar.ply import save_ply
from backend.avatar.skinning import Skeleton, pose
from backend.avatar.template import load_template
from backend.avatar.tokens import decode
from backend.export.avatar_mesh import avatar_mesh, pose_matrices_from_wire
from backend.export.gltf import glb_bytes
from backend.pipelines.errors import AvatarNotFound, BadInput
from backend.render import RenderCostError, RenderOptions, render
from backend.render.camera import Camera

EXPORT_SUFFIXES = {"ply": ".ply", "safetensors": ".safetensors", "glb": ".glb"}


def resolve_device(want: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu" / "cuda" as named."""
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def decode_avatar(bundle, tokens: torch.Tensor, meta: dict[str, Any], device: torch.device) -> AvatarRecord:
    """tokens (C, R, R) -> an AvatarRecord: the bundle's decoder's Gaussians on its template's skeleton, with
    `meta` plus what made it (generator, model name/version/sha256, template, resolution, Gaussian count)."""
    with torch.no_grad():
        gaussians = decode(tokens.to(device), bundle.layout, bundle.decoder).to("cpu")
    template = bundle.template
    model = bundle.describe()
    return AvatarRecord(
        gaussians=gaussians.detach(), tokens=tokens.detach().cpu(), joint_names=list(template.joint_names),
        joint_parents=np.asarray(template.joint_parents, dtype=np.int32),
        rest_matrices=np.asarray(template.rest_matrices, dtype=np.float32),
        joint_tails=np.asarray(template.joint_tails, dtype=np.float32),
        meta={**meta, "generator": f"genlca-dit {model['name']}",
              "model": {k: model[k] for k in ("name", "version", "sha256")}, "template": template.name,
              "resolution": bundle.resolution, "gaussians": len(gaussians)})


def find_avatar(store, avatar_id: str) -> AvatarRecord:
    """The stored avatar, or AvatarNotFound naming where it was looked for."""
    record = store.get(avatar_id)
    if record is None:
        # no path in the message: it goes to clients, and a remote one has no business with the server's folders
        where = "in memory or in the avatar folder" if getattr(store, "folder", None) is not None else \
            "in memory (this backend keeps avatars in memory only: --no-persist)"
        raise AvatarNotFound(f"no avatar with id {avatar_id!r} {where}; generate it again")
    return record


def record_skeleton(record) -> Skeleton:
    return Skeleton(list(record.joint_names), torch.as_tensor(np.asarray(record.joint_parents), dtype=torch.long),
                    torch.as_tensor(np.asarray(record.rest_matrices), dtype=torch.float32))


def render_frames(record, joint_rotations: np.ndarray, root_translations: np.ndarray, world_to_camera: np.ndarray,
                  intrinsics: np.ndarray, width: int, height: int, background: tuple[float, float, float],
                  device: torch.device, joint_locations: np.ndarray | None = None,
                  joint_scales: np.ndarray | None = None,
                  check_cancelled: Callable[[], None] | None = None, max_tile_pairs: int | None = None,
                  block_pairs: int = RenderOptions.block_pairs) -> Iterator[np.ndarray]:
    """Pose and render the avatar once per frame; yields (H, W, 4) uint8 RGBA. Arrays are float32 numpy:
    joint_rotations (F, J, 4) wxyz, root_translations (F, 3), world_to_camera (F, 4, 4), intrinsics (F, 3, 3),
    optionally joint_locations (F, J, 3) and joint_scales (F, J) (a skeleton fitted to another armature).
    A camera that is not a rigid transform, or a pose that moves Gaussians to non-finite positions, raises
    BadInput naming the frame; a frame above `max_tile_pairs` Gaussian-tile pairs raises
    backend.render.RenderCostError naming it, before it is rasterised. check_cancelled also runs between
    blocks of `block_pairs` pairs inside a frame."""
    skeleton = record_skeleton(record)
    gaussians = record.gaussians.to(device)
    options = RenderOptions(background=tuple(float(c) for c in background), max_tile_pairs=max_tile_pairs,
                            block_pairs=block_pairs)
    for f in range(joint_rotations.shape[0]):
        if check_cancelled is not None:
            check_cancelled()
        fitted = {} if joint_scales is None else {"joint_locations": torch.from_numpy(joint_locations[f]),
                                                  "joint_scales": torch.from_numpy(joint_scales[f])}
        posed = pose(gaussians, skeleton, torch.from_numpy(joint_rotations[f]),
                     torch.from_numpy(root_translations[f]), **fitted)
        if not bool(torch.isfinite(posed.means).all()):
            raise BadInput(f"frame {f}: the pose moves Gaussians to non-finite positions; keep joint_scales, "
                           f"joint_locations and root_translations in a rig's range")
        try:
            camera = Camera(world_to_camera=torch.from_numpy(world_to_camera[f]),
                            intrinsics=torch.from_numpy(intrinsics[f]), width=width, height=height)
        except ValueError as exc:
            raise BadInput(f"frame {f}: {exc}") from None
        try:
            with torch.no_grad():
                out = render(posed, camera, options=options, between_blocks=check_cancelled)
        except RenderCostError as exc:
            raise RenderCostError(exc.pairs, exc.limit, exc.tile_size, f"frame {f}") from None
        rgba = torch.cat([out.rgb[0], out.alpha[0]], dim=-1)  # (H, W, 4)
        yield (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def glb_of_record(record, motion: dict[str, np.ndarray] | None = None, fps: float = 24.0) -> bytes:
    """The .glb bytes of a stored avatar (backend/export/avatar_mesh.py)."""
    g = record.gaussians
    arrays = {"means": g.means.float().cpu().numpy(), "sh": g.sh.float().cpu().numpy(),
              "rotations": g.rotations.float().cpu().numpy(), "log_scales": g.log_scales.float().cpu().numpy(),
              "opacity_logits": g.opacity_logits.float().cpu().numpy(),
              "skin_indices": g.skin_indices.cpu().numpy(), "skin_weights": g.skin_weights.float().cpu().numpy(),
              "joint_parents": np.asarray(record.joint_parents), "rest_matrices": np.asarray(record.rest_matrices)}
    poses = None
    if motion:
        poses = pose_matrices_from_wire(arrays["rest_matrices"], arrays["joint_parents"], **motion)
    template = load_template(str(record.meta.get("template", "anny")))
    try:
        mesh = avatar_mesh(template, arrays, list(record.joint_names), name="GenLCA avatar",
                           pose_matrices=poses, fps=fps)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return glb_bytes(mesh)


def export_avatar(record, fmt: str, motion: dict[str, np.ndarray] | None = None,
                  fps: float = 24.0) -> tuple[np.ndarray, str]:
    """The avatar as file bytes (uint8) in `fmt` ("ply": the standard 3DGS PLY; "safetensors": the rigged
    GenLCA avatar file; "glb": the template mesh skinned to its skeleton and textured with its colours,
    backend/export, with `motion` (a render request's pose arrays) as its animation at `fps`) and the file
    suffix."""
    suffix = EXPORT_SUFFIXES.get(fmt)
    if suffix is None:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {tuple(EXPORT_SUFFIXES)}")
    if fmt == "glb":
        return np.frombuffer(glb_of_record(record, motion, fps), dtype=np.uint8), suffix
    with tempfile.TemporaryDirectory(prefix="genlca-export-") as tmp:
        path = Path(tmp) / f"avatar{suffix}"
        if fmt == "ply":
            save_ply(path, record.gaussians)
        else:
            save_avatar(path, record)
        return np.frombuffer(path.read_bytes(), dtype=np.uint8), suffix
