"""Fidelity through the wire: the acceptance checks "generate from a prompt -> read the attributes off the
renders" and "text edit -> the named attribute changes, the rest stays", and the avatar's region colours.

A backend server runs in this process on 127.0.0.1 (`backend_client`: a real ZeroMQ socket, the handlers of
`genlca-backend serve`); the bridge client sends `generate`/`edit`, fetches the avatar (`get_avatar`), has it
rendered in its rest pose from the front and the back (`render`, frames streamed back as RGBA), and reads the
garment and hair colours off those frames (training/evaluate.py `classify_rendered_attributes`). Region
colours are read on the decoded texels instead (`texel_lab`: a texel's colour is the opacity-weighted mean
SH-DC colour of its K Gaussians, in CIELAB). The benchmarks (benchmarks/prompt_fidelity.py, edit_fidelity.py,
photo_avatar.py) print these as tables; tests/test_shipped_model.py holds the shipped model to them.
"""
from __future__ import annotations

import contextlib
import time
import types
from typing import Any, Iterator

import numpy as np
import torch

from backend.avatar.gaussians import SH_C0
from backend.avatar.template import load_template
from backend.avatar.tokens import decode
from backend.avatar.uv_layout import load_layout
from backend.perception.regions import delta_e2000, srgb_to_lab
from backend.service.config import ServiceConfig
from backend.service.handlers import default_handlers
from backend.service.server import BackendServer
from bridge.local_backend import free_port
from bridge.wire import protocol
from bridge.wire.client import BridgeClient
from training.data import vocabulary as vocab
from training.evaluate import (RegionTexels, RenderedView, attribute_cameras, attribute_hits,
                               classify_rendered_attributes)

ATTRIBUTES = ("upper_colour", "lower_colour", "shoes_colour", "hair_colour")
EDITABLE = {"upper_colour": "torso", "lower_colour": "legs"}  # attribute -> the body region its garment covers
# what must stay: for a top's colour the legs, head, feet and hands (the arms hold the sleeves, so they are
# the top's); for the bottom's colour everything but the legs, arms and hands included
KEPT_REGIONS = {"upper_colour": ("legs", "head", "feet", "hands"),
                "lower_colour": ("torso", "head", "feet", "arms", "hands")}
LAB_REGIONS = ("torso", "arms", "hands", "legs", "head", "feet")
PHOTO_REGIONS = ("torso", "legs")  # the regions a photo's keypoints outline (backend/perception/regions.py)


# ---------------------------------------------------------------------------- prompt fidelity
def fidelity_people(count: int = 16, heldout: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """count people (attributes, caption, group "seen" | "heldout"), the last `heldout` of them each forced
    to show one held-out combination in turn. Deterministic for (count, heldout, seed)."""
    if not 0 <= heldout <= count:
        raise ValueError(f"expected 0 <= heldout <= count, got heldout={heldout}, count={count}")
    rng = np.random.default_rng(seed)
    people: list[dict[str, Any]] = []
    while len(people) < count - heldout:
        attrs = vocab.sample_attributes(rng)
        if not vocab.heldout_combinations_in(attrs):
            people.append(_person(attrs, rng, "seen"))
    combos = vocab.HELDOUT_COMBINATIONS
    while len(people) < count:
        attrs = vocab.sample_attributes(rng)
        if attrs["lower"] == "dress":  # every held-out pair names a garment that a dress would replace
            continue
        for key, value in combos[(len(people) - (count - heldout)) % len(combos)]:
            attrs[key] = value
        people.append(_person(attrs, rng, "heldout"))
    return people


def _person(attrs: dict[str, Any], rng: np.random.Generator, group: str) -> dict[str, Any]:
    attrs = {**attrs, "gender": "woman" if rng.random() < 0.5 else "man"}
    return {"attributes": attrs, "caption": vocab.benchmark_caption(attrs, rng), "group": group}


@contextlib.contextmanager
def backend_client(model: str, timeout_s: float = 120.0) -> Iterator[Any]:
    """A BackendServer on a free 127.0.0.1 port serving `model` (the handlers of `genlca-backend serve`),
    and a BridgeClient connected to it; both closed on exit."""
    address = f"tcp://127.0.0.1:{free_port()}"
    server = BackendServer(address, default_handlers(config=ServiceConfig(model=model, device="cpu")))
    server.serve_in_thread()
    client = BridgeClient(address, timeout_s=timeout_s)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def render_views(client: Any, avatar_id: str, joints: int, size: int, background=(0.0, 0.0, 0.0)) -> list[Any]:
    """The avatar rendered by the backend in its rest pose from training/evaluate.py's attribute cameras:
    RenderedView per camera (uint8 RGB and alpha as the wire carries them)."""
    cameras = list(attribute_cameras(size).values())
    n = len(cameras)
    rotations = np.zeros((n, joints, 4), np.float32)
    rotations[..., 0] = 1.0  # rest pose: the template's anchors are where the classifier projects them
    arrays = {"joint_rotations": rotations, "root_translations": np.zeros((n, 3), np.float32),
              "world_to_camera": np.stack([c.world_to_camera for c in cameras]).astype(np.float32),
              "intrinsics": np.stack([c.intrinsics for c in cameras]).astype(np.float32)}
    frames: dict[int, np.ndarray] = {}
    client.call(protocol.Render(avatar_id=avatar_id, width=size, height=size, background=tuple(background)),
                arrays, timeout_s=600.0,
                on_progress=lambda r: frames.__setitem__(int(r.header["frame"]), r.arrays["rgba"])
                if "rgba" in r.arrays else None)
    if sorted(frames) != list(range(n)):
        raise RuntimeError(f"render of {avatar_id} returned frames {sorted(frames)}, expected 0..{n - 1}")
    return [RenderedView(frames[i][..., :3], frames[i][..., 3], cameras[i], tuple(background)) for i in range(n)]


def fetch_and_render(client: Any, avatar_id: str, size: int,
                     layouts: dict[tuple[str, int], Any]) -> tuple[Any, Any, Any, list[Any]]:
    """get_avatar, then render_views: (the get_avatar reply, the avatar's UVLayout, its RegionTexels, the views).
    layouts caches (UVLayout, RegionTexels) per (template, resolution) of the avatars' meta."""
    got = client.call(protocol.GetAvatar(avatar_id=avatar_id), timeout_s=120.0)
    meta = got.header["meta"]
    key = (meta["template"], int(meta["resolution"]))
    if key not in layouts:
        layout = load_layout(load_template(key[0]), key[1])
        layouts[key] = (layout, RegionTexels.from_layout(layout))
    layout, regions = layouts[key]
    return got, layout, regions, render_views(client, avatar_id, len(got.header["joint_names"]), size)


def check_person(client: Any, person: dict[str, Any], *, steps: int, guidance: float, seed: int, size: int,
                 layouts: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """generate -> get_avatar -> render -> classify, for one person: the predicted attributes and hits."""
    t0 = time.perf_counter()
    made = client.call(protocol.Generate(prompt=person["caption"], seed=seed, steps=steps, guidance=guidance),
                       timeout_s=1800.0)
    avatar_id = made.header["avatar_id"]
    got, layout, regions, views = fetch_and_render(client, avatar_id, size, layouts)
    predicted = classify_rendered_attributes(views, layout, regions)
    meta = got.header["meta"]
    return {"caption": person["caption"], "group": person["group"], "avatar_id": avatar_id, "model": meta["model"],
            "predicted": predicted, "hits": attribute_hits(predicted, person["attributes"]),
            "truth": {k: person["attributes"][k] for k in ATTRIBUTES},
            "seconds": time.perf_counter() - t0, "views": views, "avatar": got.arrays}


def accuracy(results: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """{group: {attribute: (hits, scored)}} for groups "seen", "heldout" and "all"."""
    table: dict[str, dict[str, list[int]]] = {}
    for r in results:
        for group in (r["group"], "all"):
            for key, ok in r["hits"].items():
                cell = table.setdefault(group, {}).setdefault(key, [0, 0])
                cell[0] += int(ok)
                cell[1] += 1
    return {g: {k: (v[0], v[1]) for k, v in d.items()} for g, d in table.items()}


def mean_accuracy(results: list[dict[str, Any]]) -> float:
    """The fraction of all scored attributes that match (every attribute of every prompt weighs the same)."""
    hits = [ok for r in results for ok in r["hits"].values()]
    return float(np.mean(hits)) if hits else float("nan")


# ------------------------------------------------------------------------------ edit fidelity
def edit_pairs(count: int, attributes: tuple[str, ...] = ("upper_colour",), seed: int = 0) -> list[dict[str, Any]]:
    """count people, each {"attributes", "caption", "edits": {attribute: {"colour", "caption"}}}: the source
    caption and, per attribute, another named colour and the caption that differs from the source's in that
    colour only. Deterministic for (count, attributes, seed)."""
    unknown = [a for a in attributes if a not in EDITABLE]
    if unknown or not attributes:
        raise ValueError(f"editable attributes are {list(EDITABLE)}, got {list(attributes)}")
    if count < 1:
        raise ValueError(f"expected at least one pair, got {count}")
    rng = np.random.default_rng(seed)
    people = []
    while len(people) < count:
        attrs = vocab.sample_attributes(rng)
        if attrs["lower"] == "dress":
            continue
        attrs["gender"] = "woman" if rng.random() < 0.5 else "man"
        edits = {}
        for key in attributes:
            colour = str(rng.choice(sorted(c for c in vocab.COLOURS if c != attrs[key])))
            edits[key] = {"colour": colour, "caption": vocab.benchmark_caption({**attrs, key: colour}, rng)}
        people.append({"attributes": attrs, "caption": vocab.benchmark_caption(attrs, rng), "edits": edits})
    return people


def read_avatar(client: Any, avatar_id: str, *, size: int, layouts: dict) -> dict[str, Any]:
    """get_avatar -> render front and back -> {"predicted": attribute readings, "lab": {region: Lab (3,)},
    "meta": the avatar's meta}."""
    got, layout, regions, views = fetch_and_render(client, avatar_id, size, layouts)
    meta = got.header["meta"]
    gaussians = types.SimpleNamespace(sh=torch.tensor(got.arrays["sh"]),  # copies: wire arrays are read-only
                                      opacity_logits=torch.tensor(got.arrays["opacity_logits"]))
    per_texel, rest = divmod(len(got.arrays["sh"]), layout.num_valid)
    if rest:
        raise RuntimeError(f"{len(got.arrays['sh'])} Gaussians are not a whole number per texel of the "
                           f"{layout.num_valid} valid texels")
    return {"predicted": classify_rendered_attributes(views, layout, regions),
            "lab": avatar_region_lab(gaussians, layout, per_texel, LAB_REGIONS), "meta": meta}


def run_pair(client: Any, person: dict[str, Any], strengths: list[float], *, steps: int, guidance: float,
             seed: int, size: int, layouts: dict, invert: bool = False, region: str = "",
             same_caption: bool = False) -> dict[str, Any]:
    """generate the source, then one edit per (attribute, strength), all read off the wire. same_caption: each
    edit sends the source's own caption (a control: whatever moves then is the edit's drift, not the prompt's
    change), and "hit" means the attribute still reads as captioned."""
    made = client.call(protocol.Generate(prompt=person["caption"], seed=seed, steps=steps, guidance=guidance),
                       timeout_s=1800.0)
    source = read_avatar(client, made.header["avatar_id"], size=size, layouts=layouts)
    edits = []
    for key, edit in person["edits"].items():
        if same_caption:
            edit = {"colour": person["attributes"][key], "caption": person["caption"]}
        for strength in strengths:
            t0 = time.perf_counter()
            done = client.call(protocol.Edit(avatar_id=made.header["avatar_id"], prompt=edit["caption"],
                                             strength=strength, seed=seed, steps=steps, guidance=guidance,
                                             invert=invert, region=region),
                               timeout_s=1800.0)
            seconds = time.perf_counter() - t0
            got = read_avatar(client, done.header["avatar_id"], size=size, layouts=layouts)
            edits.append({
                "attribute": key, "strength": strength,
                "mode": done.header["meta"]["mode"] + (f" ({done.header['meta']['method']})"
                                                       if done.header["meta"].get("method") else "")
                        + (", same caption" if same_caption else ""),
                "masked_fraction": done.header["meta"].get("masked_fraction"),
                "colour": edit["colour"], "caption": edit["caption"],
                "seconds": seconds, "predicted": got["predicted"],
                "hit": got["predicted"][key] == edit["colour"],
                "source_hit": source["predicted"][key] == edit["colour"],
                "unchanged": {a: got["predicted"][a] == source["predicted"][a] for a in ATTRIBUTES if a != key},
                "de00": {r: float(delta_e2000(source["lab"][r], got["lab"][r])) for r in LAB_REGIONS}})
    return {"caption": person["caption"], "truth": {a: person["attributes"][a] for a in ATTRIBUTES},
            "source": source["predicted"], "model": source["meta"]["model"], "edits": edits}


# ------------------------------------------------------------------------ avatar region colours
def texel_lab(gaussians, gaussians_per_texel: int) -> np.ndarray:
    """Decoded Gaussians (texel-major, K per valid texel) -> (M, 3) Lab of each valid texel's colour (the
    opacity-weighted mean SH-DC colour of its K Gaussians)."""
    k = gaussians_per_texel
    rgb = (gaussians.sh[:, 0, :] * SH_C0 + 0.5).clamp(0, 1).reshape(-1, k, 3)  # (M, K, 3)
    alpha = torch.sigmoid(gaussians.opacity_logits).reshape(-1, k, 1)  # (M, K, 1)
    texel_rgb = ((rgb * alpha).sum(1) / alpha.sum(1).clamp_min(1e-6)).double().numpy()  # (M, 3)
    return srgb_to_lab(texel_rgb)


def region_masks(layout, regions: tuple[str, ...] = PHOTO_REGIONS) -> dict[str, np.ndarray]:
    """{region: (M,) bool over the valid texels} for body regions of backend/avatar/body_parts.py."""
    valid = layout.valid_indices.numpy()
    return {r: layout.region_mask(r).reshape(-1).numpy()[valid] for r in regions}


def avatar_region_lab(gaussians, layout, gaussians_per_texel: int,
                      regions: tuple[str, ...] = PHOTO_REGIONS) -> dict[str, np.ndarray]:
    """Decoded Gaussians -> {region: median Lab of its texels' colours}."""
    lab = texel_lab(gaussians, gaussians_per_texel)
    return {r: np.median(lab[m], axis=0) for r, m in region_masks(layout, regions).items()}


def split_lab(lab: np.ndarray, masks: dict[str, np.ndarray], seen: np.ndarray | None) -> dict[str, np.ndarray]:
    """(M, 3) texel Lab -> {region: median}, {region/seen: ...}, {region/unseen: ...} (seen: (M,) bool, the
    texels the photo shows; a part with no texel is left out)."""
    out = {}
    for region, m in masks.items():
        out[region] = np.median(lab[m], axis=0)
        if seen is None:
            continue
        for part, sel in (("seen", m & seen), ("unseen", m & ~seen)):
            if sel.any():
                out[f"{region}/{part}"] = np.median(lab[sel], axis=0)
    return out


def copy_fill_lab(bundle, photo, masks: dict[str, np.ndarray], seen: np.ndarray) -> dict[str, np.ndarray]:
    """The baselines without a generative model: every texel the photo shows keeps the colour the tokenizer
    read there; every other texel gets the median colour of the seen texels, of the whole body ("copy +
    fill") or of its own region where that region has seen texels ("copy + region fill")."""
    with torch.no_grad():
        gaussians = decode(photo.tokens.float(), bundle.layout, bundle.decoder)
    lab = texel_lab(gaussians, bundle.decoder.config.gaussians_per_texel)
    body = lab.copy()
    if seen.any():
        body[~seen] = np.median(lab[seen], axis=0)
    region = body.copy()
    for m in masks.values():
        if (m & seen).any():
            region[m & ~seen] = np.median(lab[m & seen], axis=0)
    return {"copy + fill": split_lab(body, masks, seen), "copy + region fill": split_lab(region, masks, seen)}


# ------------------------------------------------------------------ the exported mesh against the splats
# (benchmarks/mesh_fidelity.py and tests/test_mesh_fidelity.py: the GLB's textured mesh rendered from the
# same cameras as the avatar's Gaussians)
MESH_PROMPTS = {  # kind -> prompt; captions of the vocabulary (training/data/vocabulary.py), docs/images' rows 3, 1, 4
    "trousers": "a man with short black hair in a green hoodie and grey trousers, wearing black boots",
    "dress": "a woman with long blonde hair in a red dress, wearing white sneakers",
    "long_hair": "a woman with long black hair in a yellow jacket and navy trousers, wearing white sneakers",
}
MESH_REGIONS = {  # template joint name prefixes -> region
    "head": ("head", "neck", "eye"),
    "upper body": ("spine", "clavicle", "shoulder", "upperarm", "lowerarm"),
    "hands": ("wrist", "finger", "metacarpal"),
    "legs": ("root", "pelvis", "upperleg", "lowerleg"),
    "feet": ("foot", "toe"),
}
IOU_TARGET, DELTA_E_TARGET = 0.9, 10.0


def joint_regions(joint_names: list[str]) -> np.ndarray:
    """(J,) region index (into MESH_REGIONS) of each template joint."""
    out = np.full(len(joint_names), -1)
    for r, prefixes in enumerate(MESH_REGIONS.values()):
        for j, name in enumerate(joint_names):
            if name.startswith(prefixes):
                out[j] = r
    if (out < 0).any():
        raise ValueError(f"joints in no region: {[n for n, r in zip(joint_names, out) if r < 0]}")
    return out


def cameras(views: int, width: int, height: int) -> list:
    from backend.render.camera import orbit_cameras

    return orbit_cameras(views, 3.2, height=1.1, target=(0.0, 0.0, 0.85), fov=30.0, width=width, height_px=height)


def splat_frames(gaussians, cams) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, 3) colour (rgb / alpha where alpha > 0) and (B, H, W) alpha of the rest-pose Gaussians."""
    import torch

    from backend.render import RenderOptions, render

    with torch.no_grad():
        out = render(gaussians, cams, options=RenderOptions(background=(0.0, 0.0, 0.0)))
    alpha = out.alpha[..., 0].numpy().astype(np.float64)
    rgb = out.rgb.numpy().astype(np.float64) / np.maximum(alpha, 1e-6)[..., None]
    return np.clip(rgb, 0.0, 1.0), alpha


def compare(glb: bytes, splats: tuple[np.ndarray, np.ndarray], cams) -> dict:
    """IoU per view and ΔE00 per region of the GLB's mesh against the splat frames (`splat_frames`) of the
    same `cams`."""
    from backend.export import fidelity, mesh_render

    mesh = mesh_render.read_textured_mesh(glb)
    doc, _ = mesh_render.gltf.read_glb(glb)
    names = doc["asset"].get("extras", {}).get("genlca_joint_names") or mesh.joint_names
    vertex_region = joint_regions(names)[mesh.joints[np.arange(len(mesh.joints)), np.argmax(mesh.weights, 1)]]
    face_region = vertex_region[mesh.faces[:, 0]]
    splat_rgb, alpha = splats
    ious, sums = [], np.zeros((len(MESH_REGIONS), 2, 3))
    counts = np.zeros(len(MESH_REGIONS))
    for b, cam in enumerate(cams):
        frame = mesh_render.rasterize(mesh, cam)
        splat = alpha[b] >= 0.5
        ious.append(float((splat & frame.covered).sum() / max(1, (splat | frame.covered).sum())))
        both = splat & frame.covered
        region = np.where(frame.covered, face_region[np.maximum(frame.face, 0)], -1)
        for r in range(len(MESH_REGIONS)):
            sel = both & (region == r)
            counts[r] += sel.sum()
            sums[r, 0] += splat_rgb[b][sel].sum(0)
            sums[r, 1] += frame.rgb[sel].sum(0)
    delta = {}
    for r, name in enumerate(MESH_REGIONS):
        if counts[r] > 0:
            splat_mean, mesh_mean = sums[r, 0] / counts[r], sums[r, 1] / counts[r]
            delta[name] = float(fidelity.delta_e00(fidelity.srgb_to_lab(splat_mean), fidelity.srgb_to_lab(mesh_mean)))
    return {"iou": ious, "delta_e00": delta, "pixels": {n: int(c) for n, c in zip(MESH_REGIONS, counts)}}


def generated_avatars(model: str, steps: int, guidance: float, seed: int = 0, kinds=tuple(MESH_PROMPTS)):
    """(kind, prompt, AvatarRecord) of each of MESH_PROMPTS in `kinds`, generated and decoded in this process."""
    from backend.pipelines.avatars import decode_avatar
    from backend.pipelines.generate import SamplerSettings, generate_tokens
    from backend.pipelines.model_bundle import load_bundle
    import torch

    bundle = load_bundle(model)
    settings = SamplerSettings(steps=steps, guidance=guidance)
    for kind in kinds:
        prompt = MESH_PROMPTS[kind]
        tokens, info = generate_tokens(bundle, prompt, seed=seed, settings=settings)
        record = decode_avatar(bundle, tokens, {"prompt": prompt, "seed": seed}, torch.device("cpu"))
        yield kind, prompt, record
