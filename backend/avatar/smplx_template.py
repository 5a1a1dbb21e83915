"""Optional SMPL-X body template, built with the `smplx` package from model files the user licenses.

SMPL-X files are not redistributable, so nothing is downloaded: the user points `model_dir` at a
folder holding

    <model_dir>/smplx/SMPLX_<GENDER>.npz   (or <model_dir>/SMPLX_<GENDER>.npz)   from https://smpl-x.is.tue.mpg.de
    <model_dir>/smplx_uv.obj              (or <model_dir>/smplx/smplx_uv.obj)   the SMPL-X UV map, same site

The npz is checked (keys and shapes, read from the array headers) before `smplx.SMPLX` loads it, so a
wrong or damaged file names the file and the key. The UV map's faces must be the model's faces (in any
order; corners are matched by vertex id).

SMPL-X is Y-up in metres facing +Z; like the anny template it is turned Z-up (RotX(90°)), faces -Y,
and is lifted to stand on z = 0. Bone rest frames: Blender bone axes from head to the mean of the
children's heads (leaf bones continue their parent's direction), roll 0.

Note: no licensed files are used in the tests; tests/test_smplx_template.py builds the template through
`smplx.SMPLX` from synthetic files with the real structure (tests/smplx_synthetic.py: 10,475 vertices,
20,908 faces, 55 joints on SMPL-X's tree, UV map with seams) and checks the template, its UV layout,
decoding, posing and rendering, and the errors for missing, damaged or mismatched files.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from backend.avatar import body_parts
from backend.avatar.anny_data import blender_bone_matrix
from backend.avatar.template import BodyTemplate

SMPLX_FORMAT_VERSION = 1  # part of the source hash: bump when the conversion changes (layout caches key on it)
GENDERS = ("neutral", "male", "female")
NUM_JOINTS = 55  # pelvis .. right_thumb3 (smplx.joint_names.JOINT_NAMES[:55])

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


def part_of_joint(name: str) -> str:
    """Body part (body_parts.PART_NAMES) of an SMPL-X joint's bone, e.g. 'left_elbow' -> 'lower_arm.L'."""
    side = ".L" if name.startswith("left") else ".R" if name.startswith("right") else ""
    n = name.replace("left_", "").replace("right_", "")
    if n in ("head", "jaw") or "eye" in n:
        return "head"
    if n == "neck":
        return "neck"
    if n == "shoulder":
        return "upper_arm" + side
    if n == "elbow":
        return "lower_arm" + side
    if n == "wrist" or any(f in n for f in ("index", "middle", "pinky", "ring", "thumb")):
        return "hand" + side
    if n == "hip":
        return "upper_leg" + side
    if n == "knee":
        return "lower_leg" + side
    if n in ("ankle", "foot"):
        return "foot" + side
    return "torso"  # pelvis, spine1..3, collars


# ------------------------------------------------------------------ model file (npz)
def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of every array in an .npz, read from the .npy headers (no data loaded)."""
    fmt = np.lib.format
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = fmt.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = fmt.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = fmt.read_array_header_2_0(fh)
                    else:  # rare (3.0: utf-8 field names); read the array itself
                        fh.seek(0)
                        arr = fmt.read_array(fh, allow_pickle=True)
                        shape, dtype = arr.shape, arr.dtype
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable SMPL-X .npz file ({type(err).__name__}: {err})") from err
    return out


def _check_model_file(path: Path) -> None:
    """Raise ValueError naming `path` and the key when an array smplx needs is missing or misshaped."""
    arrays = _npz_headers(path)
    nv = arrays.get("v_template", ((-1,),))[0][0]
    want = {  # key: expected shape (None: any size)
        "v_template": (None, 3), "f": (None, 3), "J_regressor": (NUM_JOINTS, nv), "weights": (nv, NUM_JOINTS),
        "kintree_table": (2, NUM_JOINTS), "shapedirs": (nv, 3, None), "posedirs": (nv, 3, (NUM_JOINTS - 1) * 9),
        "hands_componentsl": (None, 45), "hands_componentsr": (None, 45), "hands_meanl": (45,),
        "hands_meanr": (45,), "lmk_faces_idx": (None,), "lmk_bary_coords": (None, 3),
    }
    for key, shape in want.items():
        if key not in arrays:
            raise ValueError(f"{path}: no '{key}' array; an SMPL-X model file (SMPLX_<GENDER>.npz from "
                             f"https://smpl-x.is.tue.mpg.de) has {', '.join(want)} (found: {', '.join(sorted(arrays))})")
        got, dtype = arrays[key]
        if dtype == object:  # e.g. a pickled scipy.sparse regressor: smplx densifies it, shapes checked there
            continue
        if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
            spelled = "(" + ", ".join("N" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
            raise ValueError(f"{path}: '{key}' has shape {got}, expected {spelled} for SMPL-X "
                             f"({NUM_JOINTS} joints, {nv} vertices)")
    if arrays["shapedirs"][1] != object and arrays["shapedirs"][0][2] < 20:
        raise ValueError(f"{path}: 'shapedirs' has {arrays['shapedirs'][0][2]} components, expected at least 20 "
                         "(10 shape + 10 expression)")


def _load_model(path: Path, gender: str):
    import torch
    import smplx

    _check_model_file(path)
    try:
        # smplx prints a warning for 10-component (v1.0) files: irrelevant here, and stdout may be a protocol
        with contextlib.redirect_stdout(io.StringIO()):
            return smplx.SMPLX(str(path), gender=gender, ext="npz", use_pca=False, flat_hand_mean=True,
                               dtype=torch.float64)
    except Exception as err:  # noqa: BLE001  (smplx raises AttributeError/AssertionError/... on bad data)
        raise ValueError(f"{path}: smplx could not load it ({type(err).__name__}: {err})") from err


# ------------------------------------------------------------------ UV map (obj)
def _read_uv_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(vt (T, 2), face vertex ids (F, 3), face vt ids (F, 3), number of v lines); polygons are fanned."""
    vt: list[list[float]] = []
    face_lines: list[tuple[int, str, int, int]] = []  # (line number, text, v and vt counts so far)
    nv = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("v "):
                nv += 1
            elif line.startswith("vt "):
                try:
                    uv = [float(x) for x in line.split()[1:3]]
                except ValueError:
                    uv = []
                if len(uv) != 2:
                    raise ValueError(f"{path}:{lineno}: cannot read 'vt' line: {line.strip()[:80]!r}")
                vt.append(uv)
            elif line.startswith("f "):
                face_lines.append((lineno, line, nv, len(vt)))
    if not vt:
        raise ValueError(f"{path}: no 'vt' lines; the SMPL-X UV map (smplx_uv.obj) has v, vt and 'f v/vt ...' lines")
    if not face_lines:
        raise ValueError(f"{path}: no 'f' lines; the SMPL-X UV map (smplx_uv.obj) has v, vt and 'f v/vt ...' lines")
    fv: list[list[int]] = []
    ft: list[list[int]] = []
    for lineno, line, nv_here, nt_here in face_lines:
        try:
            corners = []
            for c in line.split()[1:]:
                fields = c.split("/")
                if len(fields) < 2 or not fields[1]:
                    raise ValueError(f"face corner {c!r} has no texture coordinate index")
                iv, it = int(fields[0]), int(fields[1])  # 1-based; negative: relative to the lines so far
                corners.append((iv - 1 if iv > 0 else nv_here + iv, it - 1 if it > 0 else nt_here + it))
            if len(corners) < 3:
                raise ValueError(f"face with {len(corners)} corners")
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: cannot read 'f' line ({err}): {line.strip()[:80]!r}") from None
        for k in range(1, len(corners) - 1):
            tri = (corners[0], corners[k], corners[k + 1])
            fv.append([c[0] for c in tri])
            ft.append([c[1] for c in tri])
    fv_a, ft_a = np.asarray(fv, dtype=np.int64), np.asarray(ft, dtype=np.int64)
    if ft_a.min() < 0 or ft_a.max() >= len(vt):
        raise ValueError(f"{path}: texture coordinate index out of range 1..{len(vt)}")
    return np.asarray(vt, dtype=np.float64), fv_a, ft_a, nv


def _match_uvs(faces: np.ndarray, fv: np.ndarray, ft: np.ndarray, vt: np.ndarray, num_verts: int,
               uv_path: Path) -> np.ndarray:
    """Per-corner UVs (F, 3, 2) for the model's `faces`, from the OBJ's faces (any order, any rotation)."""
    if fv.min() < 0 or fv.max() >= num_verts:
        raise ValueError(f"{uv_path}: face vertex index out of range 1..{num_verts} (the model has {num_verts} vertices)")
    if np.array_equal(fv, faces):
        return vt[ft]
    if len(fv) != len(faces):
        raise ValueError(f"{uv_path}: {len(fv)} faces, the model has {len(faces)}: not the UV map of this model")
    key_obj, key_model = np.sort(fv, axis=1), np.sort(faces, axis=1)
    order_obj, order_model = np.lexsort(key_obj.T[::-1]), np.lexsort(key_model.T[::-1])
    if not np.array_equal(key_obj[order_obj], key_model[order_model]):
        raise ValueError(f"{uv_path}: its faces are not the model's faces: not the UV map of this model")
    match = np.empty(len(faces), dtype=np.int64)
    match[order_model] = order_obj  # model face i <- obj face match[i]
    corner = (fv[match][:, None, :] == faces[:, :, None]).argmax(-1)  # (F, 3): obj corner of each model corner
    return vt[np.take_along_axis(ft[match], corner, axis=1)]


def _hash_files(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_smplx_template(model_dir: str | os.PathLike, gender: str = "neutral") -> BodyTemplate:
    """Build the SMPL-X template (Z-up, Blender bone frames, SMPL-X's 55 joint names) from the user's files."""
    gender = gender.lower()
    if gender not in GENDERS:
        raise ValueError(f"SMPL-X gender must be one of {GENDERS}, got {gender!r}")
    model_path, uv_path = _find(model_dir, gender)
    from smplx.joint_names import JOINT_NAMES

    model = _load_model(model_path, gender)
    v = model.v_template.detach().double().numpy().copy()  # (V, 3)
    faces = model.faces_tensor.detach().numpy().astype(np.int64)  # (F, 3)
    joints = model.J_regressor.detach().double().numpy() @ v  # (J, 3)
    parents = model.parents.detach().numpy().astype(np.int64).copy()
    parents[0] = -1
    weights = model.lbs_weights.detach().double().numpy()  # (V, J)
    if (weights < -1e-6).any() or (weights.sum(1) <= 0).any():
        raise ValueError(f"{model_path}: 'weights' has negative entries or all-zero rows")
    weights = np.clip(weights, 0.0, None)
    vt, fv, ft, nv_obj = _read_uv_obj(uv_path)
    if nv_obj and nv_obj != len(v):
        raise ValueError(f"{uv_path}: {nv_obj} 'v' lines, the model has {len(v)} vertices: not the UV map of this model")
    uvs = _match_uvs(faces, fv, ft, vt, len(v), uv_path)

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
    part_of = np.array([body_parts.PART_IDS[part_of_joint(n)] for n in names], dtype=np.int64)
    return BodyTemplate(
        name=f"smplx-{gender}", vertices=v.astype(np.float32), faces=faces, uvs=uvs.astype(np.float32),
        joint_names=names, joint_parents=parents, rest_matrices=rest.astype(np.float32),
        joint_tails=tails.astype(np.float32), skin_weights=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
        vertex_parts=part_of[weights.argmax(1)],
        source_hash=_hash_files([model_path, uv_path], f"smplx:{gender}:v{SMPLX_FORMAT_VERSION}"),
    )
