"""The add-on's workflows as plain functions (the operators call these; so do the tests).

Each starts a job on the session and returns its id at once; results arrive through the session's timer
on the main thread, update the scene's `genlca` fields and show a report. Generate and edit chain a
`get_avatar` request and a staged import into the scene.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import bpy
import numpy as np

from . import export, properties, render, scene_import
from ._bridge import protocol
from .session import Session, notify

AvatarCallback = Callable[[bpy.types.Object, bpy.types.Object], None]


GENERATOR_INPUTS = ("text", "image", "steps", "guidance")  # what the panel offers to a generator
EDIT_INPUTS = ("text_edit", "region_edit")                 # what the Edit panel offers
INPUT_LABELS = {"text": "prompt", "image": "reference image", "steps": "steps", "guidance": "guidance",
                "text_edit": "text edit", "region_edit": "region edit"}
WHOLE_BODY = "whole_body"  # the region enum's "no region": a text edit of the whole avatar
AUTO_REGION = protocol.AUTO_REGION  # the region enum's "what the edit prompt changes" (a mask the backend finds)
MAX_REFERENCE_SIDE = 1024  # larger Blender images are scaled down (a copy) before their pixels are read


@dataclasses.dataclass(frozen=True)
class GeneratorStatus:
    """What the connected backend's generator is and which of the panel's inputs it uses."""

    name: str                 # "" when the backend has not said (not connected, no generate yet)
    placeholder: bool         # no model: results are seeded token maps, not generated from the inputs
    inputs: frozenset         # of GENERATOR_INPUTS + EDIT_INPUTS: the controls to enable
    model: str = ""           # the model hello reported: "name version (sha256 prefix)"; "" when none

    @property
    def unused(self) -> list[str]:
        """The panel's names of the inputs the generator ignores."""
        return [INPUT_LABELS[i] for i in GENERATOR_INPUTS if i not in self.inputs]


def note_generator(session: Session, fields: dict) -> None:
    """Record what the backend reports about its generator, from a hello reply (`generator` and `supports`,
    top level or inside a `capabilities` dict) or from a result's `meta` (`generator`)."""
    caps = fields.get("capabilities")
    caps = caps if isinstance(caps, dict) else {}
    name = fields.get("generator") or caps.get("generator")
    supports = fields.get("supports", caps.get("supports"))
    model = fields.get("model", caps.get("model"))
    if isinstance(name, str) and name:
        session.generator = name
    if isinstance(supports, (list, tuple)):
        session.generator_inputs = tuple(str(x) for x in supports)
    if isinstance(model, dict) and model.get("name"):
        session.model = dict(model)


def model_label(model: dict | None) -> str:
    """"name version (sha256 prefix)" of a hello's `model`, for the panel; "" for none."""
    if not model or not model.get("name"):
        return ""
    version = f" {model['version']}" if model.get("version") not in (None, "") else ""
    sha = str(model.get("sha256", ""))[:8]
    return f"{model['name']}{version}" + (f" ({sha})" if sha else "")


def generator_status(session: Session | None) -> GeneratorStatus:
    """Data-driven: a generator named "placeholder..." uses only the prompt (it seeds the token map) unless it
    lists what it uses; a named model uses what it lists (all inputs when it lists nothing); unknown: all."""
    name = session.generator if session is not None else ""
    listed = session.generator_inputs if session is not None else None
    placeholder = "placeholder" in name.lower()
    if listed is not None:
        inputs = frozenset(i for i in listed if i in GENERATOR_INPUTS + EDIT_INPUTS)
    else:
        inputs = frozenset((("text",) if placeholder else GENERATOR_INPUTS) + EDIT_INPUTS)
    model = model_label(getattr(session, "model", None)) if session is not None else ""
    return GeneratorStatus(name, placeholder, inputs, model)


def _props(scene_name: str):
    scene = bpy.data.scenes.get(scene_name)
    return scene.genlca if scene is not None else None


def _set_message(scene_name: str, message: str, error: bool) -> None:
    props = _props(scene_name)
    if props is not None:
        props.message, props.message_is_error = message, error


def error_handler(scene_name: str, extra: Callable[[str, str], None] | None = None) -> Callable[[str, str], None]:
    def on_error(code: str, message: str) -> None:
        _set_message(scene_name, message, True)
        notify("ERROR" if code != protocol.E_CANCELLED else "WARNING", message)
        if extra:
            extra(code, message)
    return on_error


def hello(session: Session, scene: bpy.types.Scene, on_done: Callable[[dict], None] | None = None,
          on_error: Callable[[str, str], None] | None = None) -> str:
    name = scene.name

    def on_result(reply) -> None:
        props = _props(name)
        info = dict(reply.header)
        note_generator(session, info)
        server = info.get("server", info.get("version", "GenLCA backend"))
        if props is not None:
            props.connected = True
            props.connection = f"connected to {session.address} ({server})"
        status = generator_status(session)
        _set_message(name, f"connected to {session.address}"
                     + (f"; generation is a placeholder ({status.name})" if status.placeholder else "")
                     + (f"; model {status.model}" if status.model else ""), False)
        if on_done:
            on_done(info)

    def failed(code: str, message: str) -> None:
        props = _props(name)
        if props is not None:
            props.connected = False
            props.connection = "not connected"

    return session.submit(protocol.Hello(client=f"blender {bpy.app.version_string}"), label="connect",
                          scene_name=name, on_result=on_result, on_error=error_handler(name, _chain(failed, on_error)))


def _chain(*callbacks):
    def call(*args):
        for cb in callbacks:
            if cb:
                cb(*args)
    return call


def image_rgb(image: bpy.types.Image, max_side: int = MAX_REFERENCE_SIDE) -> np.ndarray:
    """A Blender image's pixels as (H, W, 3) uint8 sRGB, top row first (the wire's image layout).

    Blender keeps pixels bottom row first as float RGBA: in the image's colour space for byte images (sRGB
    for photos), scene-linear for float images (converted to sRGB here). One bulk `foreach_get`; an image
    larger than max_side is read from a scaled-down copy (the original is untouched), which bounds the
    time on the main thread (a 1024 x 1024 read is ~20 ms)."""
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"cannot read the image {image.name!r} ({image.filepath or 'no file'}): no pixels")
    copy = None
    if max(w, h) > max_side:
        f = max_side / max(w, h)
        copy = image.copy()
        copy.scale(max(1, round(w * f)), max(1, round(h * f)))
        w, h = copy.size
    try:
        pixels = np.empty(w * h * 4, np.float32)
        (copy or image).pixels.foreach_get(pixels)  # bottom row first, RGBA float
        rgb = pixels.reshape(h, w, 4)[::-1, :, :3]
        if image.is_float:
            rgb = np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * np.maximum(rgb, 0) ** (1 / 2.4) - 0.055)
        return np.ascontiguousarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
    finally:
        if copy is not None:
            bpy.data.images.remove(copy)


def load_reference_image(path: str, max_side: int = MAX_REFERENCE_SIDE) -> np.ndarray:
    """A reference photo file as (H, W, 3) uint8 sRGB, top row first (not left in the .blend)."""
    image = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
    try:
        return image_rgb(image, max_side)
    except ValueError:
        raise ValueError(f"cannot read the image {path!r}") from None
    finally:
        bpy.data.images.remove(image)


def reference_image(props) -> np.ndarray | None:
    """The panel's reference: the picked Blender image, else the image file, else None."""
    if props.image is not None:
        return image_rgb(props.image)
    if props.image_path:
        return load_reference_image(props.image_path)
    return None


def add_to_avatar_list(scene: bpy.types.Scene, avatar_id: str, label: str, armature: bpy.types.Object):
    """The avatar joins (or updates) the scene's list and becomes the selected one."""
    props = scene.genlca
    item = next((a for a in props.avatars if avatar_id and a.avatar_id == avatar_id), None) or props.avatars.add()
    item.avatar_id, item.label, item.armature = avatar_id, label, armature
    props.avatar_index = list(props.avatars).index(item)
    return item


def fetch_and_import(session: Session, scene: bpy.types.Scene, avatar_id: str, label: str = "",
                     on_done: AvatarCallback | None = None,
                     on_error: Callable[[str, str], None] | None = None) -> str:
    """get_avatar, then a staged import into the scene; the avatar joins the scene's avatar list."""
    name = scene.name

    def on_result(reply) -> None:
        header, arrays = dict(reply.header), reply.arrays
        meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
        generator = str(meta.get("generator", "")) or session.generator
        out: dict = {}

        def steps():
            target = bpy.data.scenes[name]
            yield from scene_import.import_steps(bpy.context, header, arrays, target.collection, out=out)
            item = add_to_avatar_list(target, avatar_id, label or avatar_id[:8], out["armature"])
            if "placeholder" in generator.lower():  # say what it is: not an avatar generated from the prompt
                text = f"imported placeholder avatar {item.label} ({generator})"
            else:
                text = f"imported avatar {item.label}" + (f" ({generator})" if generator else "")
            _set_message(name, text, False)
            notify("INFO", f"GenLCA: {text}")
            if on_done:
                on_done(out["armature"], out["mesh"])

        session.add_task(steps(), label="importing avatar", scene_name=name, on_error=error_handler(name, on_error))

    return session.submit(protocol.GetAvatar(avatar_id=avatar_id), label="download avatar", scene_name=name,
                          on_result=on_result, on_error=error_handler(name, on_error))


def _then_import(session: Session, scene_name: str, label: str, on_done: AvatarCallback | None,
                 on_error: Callable[[str, str], None] | None):
    def on_result(reply) -> None:
        avatar_id = str(reply.header.get("avatar_id", ""))
        if not avatar_id:
            raise ValueError("the backend's result names no avatar_id")
        meta = reply.header.get("meta")
        if isinstance(meta, dict):
            note_generator(session, {"generator": meta.get("generator")})
        fetch_and_import(session, bpy.data.scenes[scene_name], avatar_id, label, on_done, on_error)
    return on_result


def generate(session: Session, scene: bpy.types.Scene, on_done: AvatarCallback | None = None,
             on_error: Callable[[str, str], None] | None = None) -> str:
    props = scene.genlca
    if not props.prompt.strip() and not props.image_path and props.image is None:
        raise ValueError("write a prompt or choose a reference image")
    image = reference_image(props)
    arrays = {"image": image} if image is not None else None
    request = protocol.Generate(prompt=props.prompt, seed=props.seed, steps=props.steps, guidance=props.guidance)
    source = props.image.name if props.image is not None else Path(props.image_path).stem
    label = (props.prompt.strip() or source)[:40]
    return session.submit(request, arrays, label="generate", scene_name=scene.name,
                          on_result=_then_import(session, scene.name, label, on_done, on_error),
                          on_error=error_handler(scene.name, on_error))


def edit(session: Session, scene: bpy.types.Scene, region: str = "", on_done: AvatarCallback | None = None,
         on_error: Callable[[str, str], None] | None = None) -> str:
    """Edit the active avatar: a new prompt at the scene's strength, or regenerate `region` ("" or
    WHOLE_BODY: a text edit; protocol.AUTO_REGION: what the edit prompt changes)."""
    props = scene.genlca
    region = "" if region == WHOLE_BODY else region
    item = properties.active_avatar(props)
    if item is None:
        raise ValueError("no avatar selected in the GenLCA panel")
    auto = region == protocol.AUTO_REGION
    if region and not auto and region not in protocol.BODY_REGIONS:
        raise ValueError(f"region must be {protocol.AUTO_REGION!r} or one of {protocol.BODY_REGIONS}, got {region!r}")
    if auto and not props.edit_prompt.strip():
        raise ValueError("an Auto region edit needs an edit prompt: the mask is what that prompt changes")
    prompt = props.edit_prompt if not region or auto else (props.edit_prompt or props.prompt)
    request = protocol.Edit(avatar_id=item.avatar_id, prompt=prompt, strength=props.strength, region=region,
                            seed=props.seed, steps=props.steps, guidance=props.guidance)
    label = f"{item.label} ({region or 'edit'})"[:40]
    return session.submit(request, label=f"edit {region}".strip(), scene_name=scene.name,
                          on_result=_then_import(session, scene.name, label, on_done, on_error),
                          on_error=error_handler(scene.name, on_error))


def render_frames(session: Session, scene: bpy.types.Scene, avatar: bpy.types.Object, out_dir: str,
                  frame_start: int | None = None, frame_end: int | None = None,
                  on_done: Callable[[list[Path]], None] | None = None,
                  on_error: Callable[[str, str], None] | None = None) -> render.RenderJob:
    name = scene.name

    def done(paths: list[Path]) -> None:
        _set_message(name, f"rendered {len(paths)} frames into {out_dir}", False)
        notify("INFO", f"GenLCA rendered {len(paths)} frames into {out_dir}")
        if on_done:
            on_done(paths)

    start = scene.frame_start if frame_start is None else frame_start
    end = scene.frame_end if frame_end is None else frame_end
    return render.RenderJob(session, scene, avatar, start, end, out_dir, on_done=done,
                            on_error=error_handler(name, on_error))


def export_file(session: Session, scene: bpy.types.Scene, avatar_id: str, fmt: str, out_dir: str,
                on_done: Callable[[Path], None] | None = None,
                on_error: Callable[[str, str], None] | None = None) -> str:
    name = scene.name

    def done(path: Path) -> None:
        _set_message(name, f"exported {path}", False)
        notify("INFO", f"GenLCA exported {path}")
        if on_done:
            on_done(path)

    return export.export_avatar(session, avatar_id, fmt, out_dir, scene_name=name, on_done=done,
                                on_error=error_handler(name, on_error))
