"""The Geometry Nodes tree and the material the avatar import uses.

`splat_tree`: shows each point as an oriented, coloured ellipsoid (Instance on Points with an ico
sphere, scale "scale" times a factor); the material reads "color" and "opacity" from the instancer, so it
works in Eevee and Cycles. The orientation:

- standard rig (the modifier's *Bone Frames* input names the avatar's bone-frames mesh, `skin_groups.
  build_bone_frames`): the tree turns the rest "rotation" by the skin-blended bone rotations itself, as
  the backend's LBS does (backend/avatar/skinning.py `pose`): each bone's rotation pose · rest⁻¹ is read
  off its three frame points (deformed by the bone through Blender's Armature modifier), the top-k skin
  from the INT attributes "genlca_skin_<s>" (joint << 16 | weight), the quaternions sign-aligned to slot
  0, summed with the weights, normalised. Only Blender's own nodes and modifiers: a saved file poses its
  splats without the add-on (viewport, F12, `blender -b -a`);
- fast preview (no Bone Frames object): the "posed_rotation" attribute that the add-on's handlers write,
  else "rotation".

The same nodes and sockets exist in Blender 4.2 to 5.3 (a QUATERNION Named Attribute gives a Rotation
socket; the Switch node takes ROTATION; Sample Index takes QUATERNION; Axes to Rotation).
"""
from __future__ import annotations

import bpy

SPLAT_TREE = "GenLCA Splats"
SPLAT_MATERIAL = "GenLCA Splat"
SPLAT_TREE_VERSION = 4  # 4: the Bone Frames input (standard rig), fresh points; 2: "posed_rotation" only
MAX_SKIN_SLOTS = 8  # the tree reads genlca_skin_0..7 (a missing slot reads 0: weight 0)
_WEIGHT_SCALE = 65536.0  # packed skin: joint * 65536 + weight (exact in float32 below 2**24: < 256 joints)


def _new_tree(name: str) -> bpy.types.GeometryNodeTree:
    tree = bpy.data.node_groups.new(name, "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    return tree


def splat_material() -> bpy.types.Material:
    mat = bpy.data.materials.get(SPLAT_MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(SPLAT_MATERIAL)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True  # always on (and deprecated) from Blender 5.0
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    color = nodes.new("ShaderNodeAttribute")
    color.attribute_type, color.attribute_name = "INSTANCER", "color"
    opacity = nodes.new("ShaderNodeAttribute")
    opacity.attribute_type, opacity.attribute_name = "INSTANCER", "opacity"
    emission = nodes.new("ShaderNodeEmission")  # splat colours already hold the lighting they were seen in
    transparent = nodes.new("ShaderNodeBsdfTransparent")
    mix = nodes.new("ShaderNodeMixShader")
    links.new(color.outputs["Color"], emission.inputs["Color"])
    links.new(opacity.outputs["Fac"], mix.inputs["Fac"])
    links.new(transparent.outputs[0], mix.inputs[1])
    links.new(emission.outputs[0], mix.inputs[2])
    links.new(mix.outputs[0], out.inputs["Surface"])
    return mat


def input_identifier(tree: bpy.types.NodeTree, name: str) -> str | None:
    """The identifier of the tree's input socket `name` (the key of a modifier's input value), or None."""
    for item in tree.interface.items_tree:
        if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    return None


def set_modifier_input(modifier: bpy.types.Modifier, name: str, value) -> None:
    """Set a Geometry Nodes modifier's input `name` (an ID property up to Blender 5.2; from 5.3 through
    `modifier.properties.inputs`)."""
    identifier = input_identifier(modifier.node_group, name)
    if identifier is None:
        raise KeyError(f"node group {modifier.node_group.name!r} has no input {name!r}")
    try:
        modifier[identifier] = value
    except TypeError:  # Blender 5.3+: inputs are RNA properties
        getattr(modifier.properties.inputs, identifier).value = value


def get_modifier_input(modifier: bpy.types.Modifier, name: str):
    """A Geometry Nodes modifier's input `name`, or None."""
    identifier = input_identifier(modifier.node_group, name) if modifier.node_group is not None else None
    if identifier is None:
        return None
    try:
        return modifier.get(identifier)
    except TypeError:
        socket = getattr(modifier.properties.inputs, identifier, None)
        return getattr(socket, "value", None)


def _named_attribute(nodes: bpy.types.Nodes, name: str, data_type: str) -> bpy.types.Node:
    node = nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node


def _math(nodes, links, operation: str, *inputs, node_type: str = "ShaderNodeMath"):
    """A Math (or Vector Math) node; inputs are sockets or constants."""
    node = nodes.new(node_type)
    node.operation = operation
    for i, value in enumerate(inputs):
        if isinstance(value, bpy.types.NodeSocket):
            links.new(value, node.inputs[i])
        else:
            node.inputs[i].default_value = value
    return node.outputs[0]


def _skinned_orientation(nodes, links, frames: bpy.types.NodeSocket, rest: bpy.types.NodeSocket
                         ) -> bpy.types.NodeSocket:
    """The rest orientation turned by the skin-blended bone rotations read off the bone frames geometry
    (three points per joint: its head, head + x, head + y at rest)."""
    def math(op, *inputs):
        return _math(nodes, links, op, *inputs)

    def vmath(op, *inputs):
        return _math(nodes, links, op, *inputs, node_type="ShaderNodeVectorMath")

    # on the frames geometry, at point 3j: the rotation of joint j's frame
    position, index = nodes.new("GeometryNodeInputPosition"), nodes.new("GeometryNodeInputIndex")
    axes = []
    for offset in (1, 2):
        sample = nodes.new("GeometryNodeSampleIndex")
        sample.data_type, sample.domain = "FLOAT_VECTOR", "POINT"
        links.new(frames, sample.inputs["Geometry"])
        links.new(position.outputs[0], sample.inputs["Value"])
        links.new(math("ADD", index.outputs[0], float(offset)), sample.inputs["Index"])
        axes.append(vmath("SUBTRACT", sample.outputs[0], position.outputs[0]))
    frame_rotation = nodes.new("FunctionNodeAxesToRotation")
    frame_rotation.primary_axis, frame_rotation.secondary_axis = "X", "Y"
    links.new(axes[0], frame_rotation.inputs["Primary Axis"])
    links.new(axes[1], frame_rotation.inputs["Secondary Axis"])
    acc_w, acc_v, first = None, None, None
    for slot in range(MAX_SKIN_SLOTS):
        packed = _named_attribute(nodes, f"genlca_skin_{slot}", "INT")  # splat_pose.SKIN_ATTRIBUTE
        joint = math("FLOOR", math("DIVIDE", packed.outputs["Attribute"], _WEIGHT_SCALE))
        weight = math("MULTIPLY_ADD", joint, -_WEIGHT_SCALE, packed.outputs["Attribute"])
        sample = nodes.new("GeometryNodeSampleIndex")
        sample.data_type, sample.domain = "QUATERNION", "POINT"
        links.new(frames, sample.inputs["Geometry"])
        links.new(frame_rotation.outputs["Rotation"], sample.inputs["Value"])
        links.new(math("MULTIPLY", joint, 3.0), sample.inputs["Index"])
        quat = nodes.new("FunctionNodeRotationToQuaternion")
        links.new(sample.outputs[0], quat.inputs["Rotation"])
        w = quat.outputs["W"]
        xyz = nodes.new("ShaderNodeCombineXYZ")
        for axis in "XYZ":
            links.new(quat.outputs[axis], xyz.inputs[axis])
        v = xyz.outputs[0]
        if first is None:
            first = (w, v)
            signed = weight
        else:  # the sign that makes this quaternion agree with slot 0's
            dot = math("MULTIPLY_ADD", w, first[0], vmath("DOT_PRODUCT", v, first[1]))
            signed = math("MULTIPLY", weight, math("MULTIPLY_ADD", math("GREATER_THAN", dot, 0.0), 2.0, -1.0))
        acc_w = math("MULTIPLY", w, signed) if acc_w is None else math("MULTIPLY_ADD", w, signed, acc_w)
        acc_v = vmath("MULTIPLY", v, signed) if acc_v is None else vmath("MULTIPLY_ADD", v, signed, acc_v)
    acc_w = math("ADD", acc_w, 1e-12)  # no weight at all: the identity
    norm = math("SQRT", math("MULTIPLY_ADD", acc_w, acc_w, vmath("DOT_PRODUCT", acc_v, acc_v)))
    split = nodes.new("ShaderNodeSeparateXYZ")
    links.new(acc_v, split.inputs[0])
    delta = nodes.new("FunctionNodeQuaternionToRotation")
    links.new(math("DIVIDE", acc_w, norm), delta.inputs["W"])
    for axis in "XYZ":
        links.new(math("DIVIDE", split.outputs[axis], norm), delta.inputs[axis])
    turned = nodes.new("FunctionNodeRotateRotation")
    turned.rotation_space = "GLOBAL"  # delta after the rest orientation: q = delta * rest
    links.new(rest, turned.inputs["Rotation"])
    links.new(delta.outputs["Rotation"], turned.inputs["Rotate By"])
    return turned.outputs["Rotation"]


def splat_tree() -> bpy.types.GeometryNodeTree:
    """The shared splat tree of this version (a file's older tree stays with the avatars that use it)."""
    for tree in bpy.data.node_groups:
        if tree.bl_idname == "GeometryNodeTree" and tree.get("genlca_splat_version") == SPLAT_TREE_VERSION:
            return tree
    tree = _new_tree(SPLAT_TREE)
    tree["genlca_splat_version"] = SPLAT_TREE_VERSION
    size = tree.interface.new_socket("Splat Size", in_out="INPUT", socket_type="NodeSocketFloat")
    size.default_value, size.min_value = 2.0, 0.0  # ellipsoid radius in standard deviations
    detail = tree.interface.new_socket("Detail", in_out="INPUT", socket_type="NodeSocketInt")
    detail.default_value, detail.min_value, detail.max_value = 1, 1, 4
    tree.interface.new_socket("Bone Frames", in_out="INPUT", socket_type="NodeSocketObject")
    nodes, links = tree.nodes, tree.links
    group_in, group_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    ico = nodes.new("GeometryNodeMeshIcoSphere")
    ico.inputs["Radius"].default_value = 1.0
    links.new(group_in.outputs["Detail"], ico.inputs["Subdivisions"])
    material = nodes.new("GeometryNodeSetMaterial")
    material.inputs["Material"].default_value = splat_material()
    links.new(ico.outputs["Mesh"], material.inputs["Geometry"])
    rotation = _named_attribute(nodes, "rotation", "QUATERNION")
    posed = _named_attribute(nodes, "posed_rotation", "QUATERNION")  # scene_import.POSED_ROTATION
    orient = nodes.new("GeometryNodeSwitch")
    orient.input_type = "ROTATION"
    links.new(posed.outputs["Exists"], orient.inputs["Switch"])
    links.new(rotation.outputs["Attribute"], orient.inputs["False"])
    links.new(posed.outputs["Attribute"], orient.inputs["True"])
    frames_info = nodes.new("GeometryNodeObjectInfo")
    frames_info.transform_space = "RELATIVE"  # the frames in the splat mesh's space
    links.new(group_in.outputs["Bone Frames"], frames_info.inputs["Object"])
    frames = frames_info.outputs["Geometry"]
    count = nodes.new("GeometryNodeAttributeDomainSize")
    links.new(frames, count.inputs["Geometry"])
    has_frames = _math(nodes, links, "GREATER_THAN", count.outputs["Point Count"], 0.5)  # 1.0 / 0.0
    skinned = nodes.new("GeometryNodeSwitch")
    skinned.input_type = "ROTATION"
    links.new(has_frames, skinned.inputs["Switch"])
    links.new(orient.outputs["Output"], skinned.inputs["False"])
    links.new(_skinned_orientation(nodes, links, frames, rotation.outputs["Attribute"]), skinned.inputs["True"])
    orient = skinned
    scale = _named_attribute(nodes, "scale", "FLOAT_VECTOR")
    scaled = nodes.new("ShaderNodeVectorMath")
    scaled.operation = "SCALE"
    links.new(scale.outputs["Attribute"], scaled.inputs[0])
    links.new(group_in.outputs["Splat Size"], scaled.inputs["Scale"])
    # Instance on Points would carry every point attribute to the instances (each vertex group is one, and
    # each stored SH band): ~8x the evaluation. Fresh points get only what the instances and the material
    # use, sampled from the splat mesh by index.
    source = group_in.outputs["Geometry"]
    points_count = nodes.new("GeometryNodeAttributeDomainSize")
    links.new(source, points_count.inputs["Geometry"])
    index = nodes.new("GeometryNodeInputIndex")

    def sample(value: bpy.types.NodeSocket, data_type: str) -> bpy.types.NodeSocket:
        node = nodes.new("GeometryNodeSampleIndex")
        node.data_type, node.domain = data_type, "POINT"
        links.new(source, node.inputs["Geometry"])
        links.new(value, node.inputs["Value"])
        links.new(index.outputs[0], node.inputs["Index"])
        return node.outputs[0]

    points = nodes.new("GeometryNodePoints")
    links.new(points_count.outputs["Point Count"], points.inputs["Count"])
    links.new(sample(nodes.new("GeometryNodeInputPosition").outputs[0], "FLOAT_VECTOR"), points.inputs["Position"])
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    links.new(points.outputs[0], instance.inputs["Points"])
    links.new(material.outputs["Geometry"], instance.inputs["Instance"])
    links.new(sample(orient.outputs["Output"], "QUATERNION"), instance.inputs["Rotation"])
    links.new(sample(scaled.outputs["Vector"], "FLOAT_VECTOR"), instance.inputs["Scale"])
    geometry = instance.outputs["Instances"]
    for name, data_type in (("color", "FLOAT_COLOR"), ("opacity", "FLOAT")):  # what the material reads
        store = nodes.new("GeometryNodeStoreNamedAttribute")
        store.data_type, store.domain = data_type, "INSTANCE"
        store.inputs["Name"].default_value = name
        links.new(geometry, store.inputs["Geometry"])
        links.new(sample(_named_attribute(nodes, name, data_type).outputs["Attribute"], data_type),
                  store.inputs["Value"])
        geometry = store.outputs["Geometry"]
    links.new(geometry, group_out.inputs[0])
    return tree
