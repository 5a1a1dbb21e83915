"""The Geometry Nodes tree and the material the avatar import uses.

`splat_tree`: shows each point as an oriented, coloured ellipsoid (Instance on Points with an ico
sphere, rotation from the "posed_rotation" quaternion attribute where the mesh has it, else "rotation",
scale "scale" times a factor); the material reads "color" and "opacity" from the instancer, so it works in
Eevee and Cycles. The same nodes and sockets exist in Blender 4.2 to 5.3 (a QUATERNION Named Attribute
gives a Rotation socket; the Switch node takes ROTATION).
"""
from __future__ import annotations

import bpy

SPLAT_TREE = "GenLCA Splats"
SPLAT_MATERIAL = "GenLCA Splat"
SPLAT_TREE_VERSION = 2  # 2: orients by "posed_rotation" when present; a tree without it is not reused


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


def _named_attribute(nodes: bpy.types.Nodes, name: str, data_type: str) -> bpy.types.Node:
    node = nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node


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
    scale = _named_attribute(nodes, "scale", "FLOAT_VECTOR")
    scaled = nodes.new("ShaderNodeVectorMath")
    scaled.operation = "SCALE"
    links.new(scale.outputs["Attribute"], scaled.inputs[0])
    links.new(group_in.outputs["Splat Size"], scaled.inputs["Scale"])
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    links.new(group_in.outputs["Geometry"], instance.inputs["Points"])
    links.new(material.outputs["Geometry"], instance.inputs["Instance"])
    links.new(orient.outputs["Output"], instance.inputs["Rotation"])
    links.new(scaled.outputs["Vector"], instance.inputs["Scale"])
    links.new(instance.outputs["Instances"], group_out.inputs[0])
    return tree
