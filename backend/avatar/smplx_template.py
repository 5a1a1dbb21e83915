"""Optional SMPL-X body template, built with the `smplx` package from model files the user licenses.

SMPL-X files are not redistributable, so nothing is downloaded: the user points `model_dir` at a
folder holding

    <model_dir>/smplx/SMPLX_<GENDER>.npz   (or <model_dir>/SMPLX_<GENDER>.npz)   from https://smpl-x.is.tue.mpg.de
    <model_dir>/smplx_uv.obj              (or <model_dir>/smplx/smplx_uv.obj)   the SMPL-X UV map, same site

SMPL-X is Y-up in metres facing +Z; like the anny template it is turned Z-up (RotX(90°)), faces -Y,
and is lifted to stand on z = 0. Bone rest frames: Blender bone axes from head to the mean of the
children's heads (leaf bones continue their parent's direction), roll 0.

Note: this path is exercised only when model files are present; the tests cover the missing-files error.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from backend.avatar import body_parts
from backend.avatar.anny_data import blender_bone_matrix
from backend.avatar.template import BodyTemplate

_Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def expected_files(model_dir: str | os.PathLike, gender: str = "neutral") -> dict[str, list[Path]]:
    d = Path(model_dir)
    npz = f"SMPLX_{gender.upper()}.npz"
    return {"model": [d / "smplx" / npz, d / npz], "uv": [d / "smplx_uv.obj", d / "smplx" / "smplx_uv.obj"]}


def _find(model_dir: str | os.PathLike, gender: str) -> tuple[Path, Path]:
    files = expected_files(model_dir, gender)
    found = {k: next((p for p in ps if p.is_file()), None) for k, ps in files.items()}
    missing = [k for k, p in found.items() if p is None]
    if missing:
        lines = [f"  {k}: one of {', '.join(str(p) for p in files[k])}" for k in missing]
        raise FileNotFoundError(
            f"SMPL-X template files missing under {Path(model_dir)}:\n" + "\n".join(lines)
            + "\nDownload SMPLX_<GENDER>.npz and smplx_uv.obj (the UV map) from https://smpl-x.is.tue.mpg.de "
              "(registration and licence required) and place them there.")
    return found["model"], found["uv"]  # type: ignore[return-value]


def _smplx_part(name: str) -> str:
    side = ".L" if name.startswith("left") else ".R" if name.startswith("right") else ""
    n = name.replace("left_", "").replace("right_", "")
    if n in ("head", "jaw", "eye_smplhf", "eye") or "eye" in n:
        return "head"
    if n == "neck":
        return "neck"
    if n in ("shoulder",):
        return "upper_arm" + side
    if n == "elbow":
        return "lower_arm" + side
    if n in ("wrist",) or any(f in n for f in ("index", "middle", "pinky", "ring", "thumb")):
        return "hand" + side
    if n == "hip":
        return "upper_leg" + side
    if n == "knee":
        return "lower_leg" + side
    if n in ("ankle", "foot"):
        return "foot" + side
    return "torso"  # pelvis, spine1..3, collars


def _read_uv_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vt, fv, ft = [], [], []
    with open(path) as f:
        for line in f:
            if line.startswith("vt "):
                vt.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                for k in range(1, len(corners) - 1):
                    tri = (corners[0], corners[k], corners[k + 1])
                    fv.append([int(c[0]) - 1 for c in tri])
                    ft.append([int(c[1]) - 1 for c in tri])
    return np.asarray(vt), np.asarray(fv, dtype=np.int64), np.asarray(ft, dtype=np.int64)


def load_smplx_template(model_dir: str | os.PathLike, gender: str = "neutral") -> BodyTemplate:
    model_path, uv_path = _find(model_dir, gender)
    import smplx
    from smplx.joint_names import JOINT_NAMES

    model = smplx.create(str(model_path.parent.parent if model_path.parent.name == "smplx" else model_path.parent),
                         model_type="smplx", gender=gender, use_pca=False)
    v = model.v_template.detach().double().numpy()  # (V, 3)
    joints = (model.J_regressor.detach().double().numpy() @ v)  # (J, 3)
    parents = model.parents.detach().numpy().astype(np.int64).copy()
    parents[0] = -1
    weights = model.lbs_weights.detach().double().numpy()  # (V, J)
    vt, fv, ft = _read_uv_obj(uv_path)
    v = v @ _Y_UP_TO_Z_UP.T
    joints = joints @ _Y_UP_TO_Z_UP.T
    lift = -v[:, 2].min()
    v[:, 2] += lift
    joints[:, 2] += lift
    j = len(joints)
    names = list(JOINT_NAMES[:j])
    tails = np.zeros_like(joints)
    for i in range(j):
        children = np.flatnonzero(parents == i)
        if len(children):
            tails[i] = joints[children].mean(0)
        else:
            p = parents[i]
            direction = joints[i] - joints[p] if p >= 0 else np.array([0.0, 0.0, 0.1])
            tails[i] = joints[i] + 0.5 * direction
        if np.linalg.norm(tails[i] - joints[i]) < 1e-4:
            tails[i] = joints[i] + np.array([0.0, 0.0, 0.05])
    rest = np.tile(np.eye(4), (j, 1, 1))
    rest[:, :3, :3] = blender_bone_matrix(joints, tails, np.zeros(j))
    rest[:, :3, 3] = joints
    part_of = np.array([body_parts.PART_IDS[_smplx_part(n)] for n in names])
    return BodyTemplate(
        name=f"smplx-{gender}", vertices=v.astype(np.float32), faces=fv, uvs=vt[ft].astype(np.float32),
        joint_names=names, joint_parents=parents, rest_matrices=rest.astype(np.float32),
        joint_tails=tails.astype(np.float32), skin_weights=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
        vertex_parts=part_of[weights.argmax(1)], source_hash="",
    )
