"""The avatar operations the backend serves, as a thin protocol adapter over the pipelines.

`AvatarService` checks each request, calls a pipeline (`generate.py`, `edit.py`; posing and rendering
here) with the job's progress callback and cancel check, decodes token maps into rigged Gaussians and
keeps the avatar in the store. The model comes from a checkpoint (`ServiceConfig.model`, resolved by
`model_bundle.load_bundle`): resolution, channels, Gaussians per texel, SH degree and template are the
checkpoint's, never the service's. Every generate/edit reply's `meta` names the model (name, version,
sha256 prefix) and what the request used.
"""
from __future__ import annotations

import dataclasses
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bridge import protocol
from bridge.protocol import Request


@dataclasses.dataclass
class ServiceConfig:
    """What `genlca-backend serve --config FILE.yaml` (or `--set key=value`) sets (backend/config.py)."""

    model: str = "default"         # a model package under checkpoints/, a folder, or a dit .safetensors
    text_encoder: str = ""         # "" = the checkpoint's own; else "minilm", "hashing" or a folder
    max_render_pixels: int = 2048 * 2048
    max_frames: int = 2000
    max_steps: int = 200            # sampler steps one generate/edit may ask for
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Bounds on what clients can make the backend hold or do (docs/ARCHITECTURE.md, "Threat model").
    max_render_cost: int = 1024 * 1024 * 1000   # width x height x frames of one render job
    max_image_pixels: int = 4096 * 4096         # generate's reference image
    max_queued_mb: float = 2048.0               # bytes of all queued and running requests
    max_client_jobs: int = 8                    # jobs one client may have queued or running
    send_hwm: int = 256                         # replies waiting for one client before it counts as not reading
    # The renderer's own cost unit: Gaussian-tile pairs of one frame (backend.render.frame_cost). A body
    # filling a 2048^2 frame makes ~1e6; a camera 3 cm from a body shrunk to 2 cm at 2048^2, 4e8.
    max_render_tile_pairs: int = 1 << 25        # per frame; counted before the frame is rasterised (too_costly)
    render_block_pairs: int = 1 << 22           # pairs listed at once (~32 bytes each): the CPU twin's memory

    def __post_init__(self) -> None:
        for name in ("max_render_pixels", "max_frames", "max_steps", "max_render_cost", "max_image_pixels",
                     "max_queued_mb", "max_client_jobs", "send_hwm", "max_render_tile_pairs", "render_block_pairs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def check_request(self, request: Request, arrays: dict[str, np.ndarray]) -> None:
        """Per-job cost limits, checked by the server before a job is queued (BackendServer admission).
        Raises bridge.codec.ProtocolError with too_costly / too_large / invalid_argument."""
        from bridge.codec import ProtocolError

        if isinstance(request, protocol.Render):
            rotations = arrays.get("joint_rotations")
            frames = int(rotations.shape[0]) if rotations is not None and rotations.ndim >= 1 else 0
            if not (1 <= request.width <= 8192 and 1 <= request.height <= 8192):
                raise ProtocolError(protocol.E_INVALID, f"render size {request.width}x{request.height} is out of "
                                    f"range (1..8192 each)")
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


class AvatarService:
    """The model bundle (loaded once) and the handlers over it.

    Handlers follow backend.jobs' signature: (request, arrays, ctx) -> (header fields, arrays).
    """

    def __init__(self, store, config: ServiceConfig | None = None, bundle=None) -> None:
        self.store = store
        self.config = config or ServiceConfig()
        self._lock = threading.Lock()
        self._bundle = bundle

    # ------------------------------------------------------------------ set-up
    @property
    def device(self) -> torch.device:
        want = self.config.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(want)

    def bundle(self):
        """The model package (backend.pipelines.model_bundle); loaded on first use. Raises ModelError."""
        with self._lock:
            if self._bundle is None:
                from backend.pipelines.model_bundle import load_bundle

                self._bundle = load_bundle(self.config.model, str(self.device), self.config.text_encoder or None)
            return self._bundle

    def hello_fields(self) -> dict[str, Any]:
        """What `hello` says about the model: the add-on shows the name and enables what it supports."""
        model = self.bundle().describe()
        return {"generator": f"genlca-dit {model['name']}", "supports": model["supports"], "model": model}

    def handlers(self) -> dict[str, Any]:
        return {"generate": self.generate, "edit": self.edit, "get_avatar": self.get_avatar,
                "render": self.render, "export": self.export}

    # ------------------------------------------------------------------ helpers
    def _decode_and_store(self, tokens: torch.Tensor, meta: dict[str, Any], ctx) -> dict[str, Any]:
        from backend.avatar.avatar_file import AvatarRecord
        from backend.avatar.tokens import decode

        bundle = self.bundle()
        ctx.progress("decode", 0, 1)
        with torch.no_grad():
            gaussians = decode(tokens.to(self.device), bundle.layout, bundle.decoder).to("cpu")
        ctx.check_cancelled()
        template = bundle.template
        model = bundle.describe()
        record = AvatarRecord(
            gaussians=gaussians.detach(), tokens=tokens.detach().cpu(), joint_names=list(template.joint_names),
            joint_parents=np.asarray(template.joint_parents, dtype=np.int32),
            rest_matrices=np.asarray(template.rest_matrices, dtype=np.float32),
            joint_tails=np.asarray(template.joint_tails, dtype=np.float32),
            meta={**meta, "generator": f"genlca-dit {model['name']}",
                  "model": {k: model[k] for k in ("name", "version", "sha256")}, "template": template.name,
                  "resolution": bundle.resolution, "gaussians": len(gaussians)})
        avatar_id = uuid.uuid4().hex[:12]
        self.store.put(avatar_id, record)
        ctx.progress("decode", 1, 1)
        return {"avatar_id": avatar_id, "meta": record.meta}

    def _record(self, avatar_id: str):
        from backend.jobs import HandlerError

        record = self.store.get(avatar_id)
        if record is None:  # the message names no path: a remote client has no business with the server's folders
            where = "in memory or in the avatar folder" if getattr(self.store, "folder", None) is not None else \
                "in memory (this backend keeps avatars in memory only: --no-persist)"
            raise HandlerError(protocol.E_NOT_FOUND, f"no avatar with id {avatar_id!r} {where}; generate it again")
        return record

    def _settings(self, request):
        from backend.jobs import HandlerError
        from backend.pipelines.generate import SamplerSettings

        if not 1 <= request.steps <= self.config.max_steps:
            raise HandlerError(protocol.E_INVALID, f"steps must be in 1..{self.config.max_steps}, got {request.steps}")
        try:
            return SamplerSettings(steps=int(request.steps), guidance=float(request.guidance))
        except ValueError as exc:
            raise HandlerError(protocol.E_INVALID, str(exc)) from None

    @staticmethod
    def _run(fn, ctx):
        """Run a pipeline with the job's progress and cancel; a cancel between steps ends the job."""
        from backend.jobs import HandlerError
        from backend.sampling.solvers import SamplingCancelled

        try:
            return fn(lambda stage, i, n: ctx.progress(stage, i, n), lambda: bool(getattr(ctx, "cancelled", False)))
        except SamplingCancelled:
            ctx.check_cancelled()  # raises the job's own cancellation
            raise
        except ValueError as exc:  # a pipeline's named refusal (shapes, regions, strengths)
            raise HandlerError(protocol.E_INVALID, str(exc)) from None

    # ------------------------------------------------------------------ generate / edit
    def generate(self, request: Request, arrays: dict[str, np.ndarray], ctx):
        from backend.jobs import HandlerError
        from backend.pipelines.generate import generate_tokens
        from backend.pipelines.photo import PerceptionError, observe_photo

        assert isinstance(request, protocol.Generate)
        image = arrays.get("image")
        if image is not None and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3
                                  or min(image.shape[:2]) < 16):
            raise HandlerError(protocol.E_BAD_ARRAY, f"expected image of dtype uint8 and shape (H, W, 3) with "
                               f"H, W >= 16, got {image.dtype} {image.shape}")
        unknown = sorted(set(arrays) - {"image"})
        if unknown:
            raise HandlerError(protocol.E_BAD_ARRAY, f"generate takes only an 'image' array, got {unknown}")
        if image is None and not request.prompt.strip():
            raise HandlerError(protocol.E_INVALID, "generate needs a prompt, a reference image, or both")
        settings = self._settings(request)
        ctx.progress("load", 0, 1)
        bundle = self.bundle()
        ctx.progress("load", 1, 1)
        photo = None
        if image is not None:
            if "image" not in bundle.supports:
                raise HandlerError(protocol.E_INVALID, f"the model {bundle.name!r} takes no image condition")
            ctx.progress("photo", 0, 1)
            try:
                photo = observe_photo(bundle, np.ascontiguousarray(image))
            except PerceptionError as exc:  # corrupt image, nobody in it, perception not installed
                raise HandlerError(protocol.E_INVALID, f"the reference image cannot be used: {exc}") from None
            ctx.progress("photo", 1, 1)
        tokens, info = self._run(lambda progress, cancel: generate_tokens(
            bundle, request.prompt, seed=int(request.seed), settings=settings, photo=photo, progress=progress,
            cancel=cancel), ctx)
        meta = {"prompt": request.prompt, "seed": request.seed, "image_used": photo is not None, "sampler": info}
        if photo is not None:
            meta["photo"] = photo.info
        return self._decode_and_store(tokens, meta, ctx), {}

    def edit(self, request: Request, arrays: dict[str, np.ndarray], ctx):
        from backend.jobs import HandlerError
        from backend.pipelines.edit import edit_text, regenerate_auto, regenerate_region

        assert isinstance(request, protocol.Edit)
        if arrays:
            raise HandlerError(protocol.E_BAD_ARRAY, f"edit takes no arrays, got {sorted(arrays)}")
        source = self._record(request.avatar_id)
        if source.tokens is None:
            raise HandlerError(protocol.E_INVALID, f"avatar {request.avatar_id!r} has no token map to edit")
        auto = request.region == protocol.AUTO_REGION
        if request.region and not auto and request.region not in protocol.BODY_REGIONS:
            raise HandlerError(protocol.E_INVALID, f"unknown region {request.region!r}; expected "
                               f"{protocol.AUTO_REGION!r} or one of {protocol.BODY_REGIONS}")
        if not 0.0 < request.strength <= 1.0:
            raise HandlerError(protocol.E_INVALID, f"strength must be in (0, 1], got {request.strength}")
        if (auto or not request.region) and not request.prompt.strip():
            raise HandlerError(protocol.E_INVALID, "a text edit needs a prompt (or name a region to regenerate); "
                               "region 'auto' masks what the prompt changes, so it needs one too")
        if request.region and request.invert:
            raise HandlerError(protocol.E_INVALID, f"invert applies to a text edit only; a region edit "
                               f"(region {request.region!r}) inpaints from noise and cannot invert")
        settings = self._settings(request)
        bundle = self.bundle()
        if auto:  # the mask contrasts the new prompt with the source's own caption (its meta), else ""
            reference = str(source.meta.get("prompt", "") or "")
            tokens, info = self._run(lambda progress, cancel: regenerate_auto(
                bundle, source.tokens, request.prompt, reference, seed=int(request.seed), settings=settings,
                progress=progress, cancel=cancel), ctx)
        elif request.region:
            tokens, info = self._run(lambda progress, cancel: regenerate_region(
                bundle, source.tokens, request.region, request.prompt, seed=int(request.seed), settings=settings,
                progress=progress, cancel=cancel), ctx)
        else:
            tokens, info = self._run(lambda progress, cancel: edit_text(
                bundle, source.tokens, request.prompt, strength=float(request.strength), seed=int(request.seed),
                settings=settings, invert=bool(request.invert), progress=progress, cancel=cancel), ctx)
        mode = "auto-region" if auto else "region" if request.region else "invert" if request.invert else "noise"
        meta = {"edited_from": request.avatar_id, "prompt": request.prompt, "region": request.region,
                "strength": request.strength, "mode": mode, "seed": request.seed, "sampler": info}
        if auto:
            meta["masked_fraction"] = info["masked_fraction"]
        return self._decode_and_store(tokens, meta, ctx), {}

    # ------------------------------------------------------------------ get / render / export
    def get_avatar(self, request: Request, arrays: dict[str, np.ndarray], ctx):
        assert isinstance(request, protocol.GetAvatar)
        record = self._record(request.avatar_id)
        return ({"avatar_id": request.avatar_id, "joint_names": list(record.joint_names), "meta": record.meta},
                avatar_arrays(record))

    def render(self, request: Request, arrays: dict[str, np.ndarray], ctx):
        from backend.avatar.skinning import pose
        from backend.jobs import HandlerError
        from backend.render import RenderCostError, RenderOptions, render
        from backend.render.camera import Camera

        assert isinstance(request, protocol.Render)
        record = self._record(request.avatar_id)
        poses, roots, w2c, intr, locations, scales = check_render_request(request, arrays, len(record.joint_names),
                                                                          self.config)
        if scales is not None:
            check_chain_scales(scales, np.asarray(record.joint_parents), list(record.joint_names))
        skeleton = record_skeleton(record)
        device = self.device
        gaussians = record.gaussians.to(device)
        options = RenderOptions(background=tuple(float(c) for c in request.background),
                                max_tile_pairs=self.config.max_render_tile_pairs,
                                block_pairs=self.config.render_block_pairs)
        frames = poses.shape[0]
        for f in range(frames):
            ctx.check_cancelled()
            fitted = {} if scales is None else {"joint_locations": torch.from_numpy(locations[f]),
                                                "joint_scales": torch.from_numpy(scales[f])}
            posed = pose(gaussians, skeleton, torch.from_numpy(poses[f]), torch.from_numpy(roots[f]), **fitted)
            if not bool(torch.isfinite(posed.means).all()):   # the ranges above keep this from happening
                raise HandlerError(protocol.E_INVALID, f"frame {f}: the pose moves Gaussians to non-finite "
                                   f"positions; keep joint_scales, joint_locations and root_translations in range")
            try:
                camera = Camera(world_to_camera=torch.from_numpy(w2c[f]), intrinsics=torch.from_numpy(intr[f]),
                                width=request.width, height=request.height)
            except ValueError as exc:
                raise HandlerError(protocol.E_BAD_ARRAY, f"frame {f}: {exc}") from None
            try:
                with torch.no_grad():
                    out = render(posed, camera, options=options, between_blocks=ctx.check_cancelled)
            except RenderCostError as exc:
                raise HandlerError(protocol.E_TOO_COSTLY, f"render frame {f}: {exc}") from None
            rgba = torch.cat([out.rgb[0], out.alpha[0]], dim=-1)  # (H, W, 4)
            rgba8 = (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
            ctx.progress("frame", f, frames, arrays={"rgba": rgba8}, frame=f)
        return {"frames": frames, "avatar_id": request.avatar_id}, {}

    def export(self, request: Request, arrays: dict[str, np.ndarray], ctx):
        from backend.avatar.avatar_file import save_avatar
        from backend.avatar.ply import save_ply
        from backend.jobs import HandlerError

        assert isinstance(request, protocol.Export)
        if request.format not in protocol.EXPORT_FORMATS:
            raise HandlerError(protocol.E_INVALID,
                               f"unknown export format {request.format!r}; expected one of {protocol.EXPORT_FORMATS}")
        record = self._record(request.avatar_id)
        suffix = ".ply" if request.format == "ply" else ".safetensors"
        with tempfile.TemporaryDirectory(prefix="genlca-export-") as tmp:
            path = Path(tmp) / f"avatar{suffix}"
            if request.format == "ply":
                save_ply(path, record.gaussians)
            else:
                save_avatar(path, record)
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        return {"filename": f"genlca-{request.avatar_id}{suffix}", "format": request.format}, {"file": data}


# ---------------------------------------------------------------------- free functions
def avatar_arrays(record) -> dict[str, np.ndarray]:
    """The AVATAR_ARRAYS of a stored avatar, as wire dtypes."""
    g = record.gaussians
    return {
        "means": g.means.float().cpu().numpy(),
        "rotations": g.rotations.float().cpu().numpy(),
        "log_scales": g.log_scales.float().cpu().numpy(),
        "opacity_logits": g.opacity_logits.float().cpu().numpy(),
        "sh": g.sh.float().cpu().numpy(),
        "skin_indices": g.skin_indices.cpu().numpy().astype(np.uint16),
        "skin_weights": g.skin_weights.float().cpu().numpy(),
        "joint_parents": np.asarray(record.joint_parents, dtype=np.int32),
        "rest_matrices": np.asarray(record.rest_matrices, dtype=np.float32),
        "joint_tails": np.asarray(record.joint_tails, dtype=np.float32),
    }


def record_skeleton(record):
    from backend.avatar.skinning import Skeleton

    return Skeleton(list(record.joint_names), torch.as_tensor(np.asarray(record.joint_parents), dtype=torch.long),
                    torch.as_tensor(np.asarray(record.rest_matrices), dtype=torch.float32))


def check_render_request(request, arrays: dict[str, np.ndarray], joints: int, config: ServiceConfig):
    """Validate a render request's arrays against RENDER_ARRAYS and the optional RENDER_POSE_ARRAYS; returns
    joint_rotations, root_translations, world_to_camera, intrinsics, joint_locations and joint_scales as
    float32 numpy (the last two None when absent; one alone gets the other's neutral value)."""
    from backend.jobs import HandlerError

    if not (1 <= request.width <= 8192 and 1 <= request.height <= 8192) or \
            request.width * request.height > config.max_render_pixels:
        raise HandlerError(protocol.E_INVALID, f"render size {request.width}x{request.height} is out of range "
                           f"(at most {config.max_render_pixels} pixels)")
    if len(request.background) != 3 or not all(np.isfinite(c) for c in request.background):
        raise HandlerError(protocol.E_INVALID, f"background must be 3 finite floats, got {request.background!r}")
    missing = [n for n in protocol.RENDER_ARRAYS if n not in arrays]
    extra = sorted(set(arrays) - set(protocol.RENDER_ARRAYS) - set(protocol.RENDER_POSE_ARRAYS))
    if missing or extra:
        raise HandlerError(protocol.E_BAD_ARRAY, f"render needs arrays {list(protocol.RENDER_ARRAYS)}; "
                           f"missing {missing}, unexpected {extra}")
    frames = arrays["joint_rotations"].shape[0] if arrays["joint_rotations"].ndim == 3 else -1
    expect = {"joint_rotations": (frames, joints, 4), "root_translations": (frames, 3),
              "world_to_camera": (frames, 4, 4), "intrinsics": (frames, 3, 3)}
    fitted = {"joint_locations": (frames, joints, 3), "joint_scales": (frames, joints)}
    if any(name in arrays for name in fitted):  # a skeleton fitted to another armature's proportions
        neutral = {"joint_locations": np.zeros, "joint_scales": np.ones}
        expect.update(fitted)
        arrays = {**{name: neutral[name]((max(frames, 0), *shape[1:]), np.float32) for name, shape in fitted.items()},
                  **arrays}
    out = []
    for name, shape in expect.items():
        a = arrays[name]
        if a.dtype != np.float32 or tuple(a.shape) != shape:
            raise HandlerError(protocol.E_BAD_ARRAY,
                               f"expected {name} of dtype float32 and shape {shape}, got {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise HandlerError(protocol.E_BAD_ARRAY, f"{name} contains NaN or inf")
        out.append(np.array(a, dtype=np.float32, order="C", copy=True))  # writable: torch.from_numpy shares it
    norms = np.linalg.norm(out[0], axis=-1)   # (F, J)
    if (norms < 1e-6).any():
        f, j = np.argwhere(norms < 1e-6)[0]
        raise HandlerError(protocol.E_INVALID, f"joint_rotations[{f}, {j}] is a zero quaternion; expected a "
                           f"rotation (w, x, y, z), e.g. (1, 0, 0, 0) for the rest pose")
    if not 1 <= frames <= config.max_frames:
        raise HandlerError(protocol.E_INVALID, f"frame count must be in 1..{config.max_frames}, got {frames}")
    if len(out) == 4:
        out += [None, None]
    else:
        scales = out[5]
        if (scales <= 0).any():
            f, j = np.argwhere(scales <= 0)[0]
            raise HandlerError(protocol.E_INVALID, f"joint_scales[{f}, {j}] is {scales[f, j]}; expected a positive "
                               f"uniform bone scale (1 keeps the avatar's proportions)")
    try:
        check_pose_ranges(dict(zip(("joint_rotations", "root_translations", "world_to_camera", "intrinsics",
                                    "joint_locations", "joint_scales"), out)), request.width, request.height)
    except ValueError as exc:
        raise HandlerError(protocol.E_INVALID, str(exc)) from None
    return tuple(out)


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
    from bridge.contract import check_range

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


def check_chain_scales(scales: np.ndarray, parents: np.ndarray, joint_names: list[str]) -> None:
    """joint_scales (F, J) compound down the skeleton: each bone's product from the root within
    CHAIN_SCALE_RANGE. HandlerError(invalid_argument) naming the frame and the bone."""
    from backend.jobs import HandlerError

    logs = np.log(scales.astype(np.float64))   # (F, J), scales already checked positive and finite
    chain = np.zeros_like(logs)
    for j, p in enumerate(parents.tolist()):   # parents come before children (the template's order)
        chain[:, j] = logs[:, j] + (chain[:, p] if p >= 0 else 0.0)
    low, high = np.log(CHAIN_SCALE_RANGE[0]), np.log(CHAIN_SCALE_RANGE[1])
    bad = np.argwhere((chain < low) | (chain > high))
    if len(bad):
        f, j = bad[0]
        raise HandlerError(protocol.E_INVALID, f"joint_scales[{f}]: the scales from the root down to bone "
                           f"{joint_names[j]!r} multiply to {np.exp(chain[f, j]):.3g}, outside "
                           f"{CHAIN_SCALE_RANGE[0]:g}..{CHAIN_SCALE_RANGE[1]:g}")
