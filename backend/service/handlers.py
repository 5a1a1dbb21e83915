"""The avatar operations the backend serves: each handler checks its request, calls the pipelines
(backend/pipelines: generate, edit, photo, avatars) with the job's progress callback and cancel check, and
maps the pipelines' domain errors to wire errors (HandlerError with a bridge.wire.protocol code):

    AvatarNotFound -> not_found    BadInput -> bad_array    PerceptionError, any other ValueError -> invalid_argument
    SamplingCancelled -> the job's own cancellation

The model comes from a checkpoint (`ServiceConfig.model`, resolved by `model_bundle.load_bundle`):
resolution, channels, Gaussians per texel, SH degree and template are the checkpoint's, never the
service's. Every generate/edit reply's `meta` names the model (name, version, sha256 prefix) and what the
request used. `default_service()` is what `genlca-backend serve` runs; `default_handlers()` gives just its
handlers.
"""
from __future__ import annotations

import threading
import uuid
from typing import Any, Callable

import numpy as np
import torch

from backend.perception.media import PerceptionError
from backend.pipelines.avatars import (decode_avatar, export_avatar, find_avatar, render_frames,
                                       resolve_device)
from backend.pipelines.edit import edit_text, regenerate_auto, regenerate_region
from backend.pipelines.errors import AvatarNotFound, BadInput
from backend.pipelines.generate import SamplerSettings, generate_tokens
from backend.pipelines.model_bundle import load_bundle
from backend.pipelines.photo import observe_photo
from backend.pipelines.store import AvatarStore
from backend.sampling.solvers import SamplingCancelled
from backend.render import RenderCostError
from backend.service.config import CHAIN_SCALE_RANGE, ServiceConfig, check_pose_ranges, check_render_size
from backend.service.queue import HandlerError, JobContext
from bridge.wire import protocol
from bridge.wire.codec import bad_array
from bridge.wire.contract import check_arrays
from bridge.wire.protocol import Request


class AvatarService:
    """The model bundle (loaded once) and the handlers over it.

    Handlers follow backend.service.queue's signature: (request, arrays, ctx) -> (header fields, arrays).
    """

    def __init__(self, store, config: ServiceConfig | None = None, bundle=None) -> None:
        self.store = store
        self.config = config or ServiceConfig()
        self._lock = threading.Lock()
        self._bundle = bundle

    # ------------------------------------------------------------------ set-up
    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    def bundle(self):
        """The model package (backend.pipelines.model_bundle); loaded on first use. Raises ModelError."""
        with self._lock:
            if self._bundle is None:
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
    def _decode_and_store(self, tokens: torch.Tensor, meta: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        ctx.progress("decode", 0, 1)
        record = decode_avatar(self.bundle(), tokens, meta, self.device)
        ctx.check_cancelled()
        avatar_id = uuid.uuid4().hex[:12]
        self.store.put(avatar_id, record)
        ctx.progress("decode", 1, 1)
        return {"avatar_id": avatar_id, "meta": record.meta}

    def _record(self, avatar_id: str):
        try:
            return find_avatar(self.store, avatar_id)
        except AvatarNotFound as exc:
            raise HandlerError(protocol.E_NOT_FOUND, str(exc)) from None

    def _settings(self, request) -> SamplerSettings:
        if not 1 <= request.steps <= self.config.max_steps:
            raise HandlerError(protocol.E_INVALID, f"steps must be in 1..{self.config.max_steps}, got {request.steps}")
        try:
            return SamplerSettings(steps=int(request.steps), guidance=float(request.guidance))
        except ValueError as exc:
            raise HandlerError(protocol.E_INVALID, str(exc)) from None

    @staticmethod
    def _run(fn: Callable, ctx: JobContext):
        """Run a pipeline with the job's progress and cancel; a cancel between steps ends the job."""
        try:
            return fn(lambda stage, i, n: ctx.progress(stage, i, n), lambda: bool(getattr(ctx, "cancelled", False)))
        except SamplingCancelled:
            ctx.check_cancelled()  # raises the job's own cancellation
            raise
        except ValueError as exc:  # a pipeline's named refusal (shapes, regions, strengths)
            raise HandlerError(protocol.E_INVALID, str(exc)) from None

    # ------------------------------------------------------------------ generate / edit
    def generate(self, request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
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

    def edit(self, request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
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
            meta["masked_fraction"], meta["method"] = info["masked_fraction"], info["method"]
        return self._decode_and_store(tokens, meta, ctx), {}

    # ------------------------------------------------------------------ get / render / export
    def get_avatar(self, request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
        assert isinstance(request, protocol.GetAvatar)
        record = self._record(request.avatar_id)
        return ({"avatar_id": request.avatar_id, "joint_names": list(record.joint_names), "meta": record.meta},
                avatar_arrays(record))

    def render(self, request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
        assert isinstance(request, protocol.Render)
        record = self._record(request.avatar_id)
        poses, roots, w2c, intr, locations, scales = check_render_request(request, arrays, len(record.joint_names),
                                                                          self.config)
        if scales is not None:
            check_chain_scales(scales, np.asarray(record.joint_parents), list(record.joint_names))
        frames = poses.shape[0]
        try:
            for f, rgba8 in enumerate(render_frames(record, poses, roots, w2c, intr, request.width, request.height,
                                                    request.background, self.device, joint_locations=locations,
                                                    joint_scales=scales, check_cancelled=ctx.check_cancelled,
                                                    max_tile_pairs=self.config.max_render_tile_pairs,
                                                    block_pairs=self.config.render_block_pairs)):
                ctx.progress("frame", f, frames, arrays={"rgba": rgba8}, frame=f)
        except BadInput as exc:
            raise HandlerError(protocol.E_BAD_ARRAY, str(exc)) from None
        except RenderCostError as exc:   # the frame's Gaussian-tile pairs, counted before it was rasterised
            raise HandlerError(protocol.E_TOO_COSTLY, f"render {exc}") from None
        return {"frames": frames, "avatar_id": request.avatar_id}, {}

    def export(self, request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
        assert isinstance(request, protocol.Export)
        if request.format not in protocol.EXPORT_FORMATS:
            raise HandlerError(protocol.E_INVALID,
                               f"unknown export format {request.format!r}; expected one of {protocol.EXPORT_FORMATS}")
        record = self._record(request.avatar_id)
        motion = check_export_motion(request, arrays, len(record.joint_names))
        try:
            data, suffix = export_avatar(record, request.format, motion, request.fps)
        except BadInput as exc:
            raise HandlerError(protocol.E_INVALID, str(exc)) from None
        return {"filename": f"genlca-{request.avatar_id}{suffix}", "format": request.format}, {"file": data}


def check_export_motion(request: protocol.Export, arrays: dict[str, np.ndarray],
                        j_count: int) -> dict[str, np.ndarray] | None:
    """The pose arrays of a "glb" export (joint_rotations (F, J, 4) and root_translations (F, 3) together,
    optional joint_locations / joint_scales), checked; None without any. HandlerError naming the problem."""
    if not arrays:
        return None
    if request.format != "glb":
        raise HandlerError(protocol.E_BAD_ARRAY, f"export format {request.format!r} takes no arrays, got {sorted(arrays)}")
    missing = [k for k in ("joint_rotations", "root_translations") if k not in arrays]
    if missing:
        raise HandlerError(protocol.E_BAD_ARRAY, f"a motion needs joint_rotations and root_translations; missing {missing}")
    frames = arrays["joint_rotations"].shape[0]
    want = {"joint_rotations": (frames, j_count, 4), "root_translations": (frames, 3),
            "joint_locations": (frames, j_count, 3), "joint_scales": (frames, j_count)}
    for name, a in arrays.items():
        if a.shape != want[name]:
            raise HandlerError(protocol.E_BAD_ARRAY, f"expected {name} of shape {want[name]}, got {a.shape}")
        if not np.isfinite(a).all():
            raise HandlerError(protocol.E_BAD_ARRAY, f"{name} holds NaN or inf")
    if frames < 1 or (np.linalg.norm(arrays["joint_rotations"], axis=-1) < 1e-6).any():
        raise HandlerError(protocol.E_BAD_ARRAY, "joint_rotations must be nonzero quaternions, one frame at least")
    if "joint_scales" in arrays and (arrays["joint_scales"] <= 0).any():
        raise HandlerError(protocol.E_BAD_ARRAY, "joint_scales must be > 0")
    if not (0.0 < float(request.fps) <= 1000.0):
        raise HandlerError(protocol.E_INVALID, f"fps must be in (0, 1000], got {request.fps}")
    return {k: np.asarray(v) for k, v in arrays.items()}


def default_service(store=None, config: ServiceConfig | None = None) -> AvatarService:
    """What `genlca-backend serve` runs: the model package named by ServiceConfig.model (diffusion model,
    token decoder, optional tokenizer) over the avatar core; avatars in `store` (default: in memory)."""
    return AvatarService(store if store is not None else AvatarStore(), config)


def default_handlers(store=None, config: ServiceConfig | None = None) -> dict[str, Any]:
    return default_service(store, config).handlers()


# ---------------------------------------------------------------------- wire <-> record
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


def check_render_request(request, arrays: dict[str, np.ndarray], joints: int, config: ServiceConfig):
    """Validate a render request's arrays against RENDER_ARRAYS and the optional RENDER_POSE_ARRAYS (the one
    contract check, J bound to the avatar's joints); returns joint_rotations, root_translations,
    world_to_camera, intrinsics, joint_locations and joint_scales as writable float32 numpy (the last two None
    when absent; one alone gets the other's neutral value)."""
    check_render_size(request.width, request.height, config.max_render_pixels)
    if len(request.background) != 3 or not all(np.isfinite(c) for c in request.background):
        raise HandlerError(protocol.E_INVALID, f"background must be 3 finite floats, got {request.background!r}")
    dims = check_arrays(arrays, {**protocol.RENDER_ARRAYS, **protocol.RENDER_POSE_ARRAYS}, {"J": joints},
                        error=bad_array, optional=protocol.RENDER_POSE_ARRAYS, allow_extra=False)
    frames = dims["F"]
    names = list(protocol.RENDER_ARRAYS)
    if any(name in arrays for name in protocol.RENDER_POSE_ARRAYS):  # a skeleton fitted to another armature
        neutral = {"joint_locations": np.zeros((frames, joints, 3), np.float32),
                   "joint_scales": np.ones((frames, joints), np.float32)}
        arrays = {**neutral, **arrays}
        names += list(protocol.RENDER_POSE_ARRAYS)
    for name in names:
        if not np.isfinite(arrays[name]).all():
            raise HandlerError(protocol.E_BAD_ARRAY, f"{name} contains NaN or inf")
    out = [np.array(arrays[name], dtype=np.float32, order="C", copy=True) for name in names]  # torch shares them
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


def check_chain_scales(scales: np.ndarray, parents: np.ndarray, joint_names: list[str]) -> None:
    """joint_scales (F, J) compound down the skeleton: each bone's product from the root within
    CHAIN_SCALE_RANGE. HandlerError(invalid_argument) naming the frame and the bone."""
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
