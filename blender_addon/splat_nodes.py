"""Geometry Nodes trees and the material the avatar import uses.

`skin_bake_tree`: turns dense skin weights (packed four joints per FLOAT_COLOR point attribute) into
vertex groups named after the joints. Blender has no bulk API for vertex-group weights
(`VertexGroup.add` takes one weight per call and costs ~0.5 µs per entry), but Store Named Attribute
writes into an existing vertex group of the same name, in C++, over all points at once.

`splat_tree`: shows each point as an oriented, coloured ellipsoid (Instance on Points with an ico
sphere, rotation from the "rotation" quaternion attribute, scale "scale" times a factor); the material
reads "color" and "opacity" from the instancer, so it works in Eevee and Cycles.
"""
from __future__ import annotations

import hashlib
from typing import Generator, Sequence

import bpy

SKIN_BAKE_TREE = "GenLCA Skin To Vertex Groups"
SPLAT_TREE = "GenLCA Splats"
SPLAT_MATERIAL = "GenLCA Splat"


def _new_tree(name: str) -> bpy.types.GeometryNodeTree:
    tree = bpy.data.node_groups.new(name, "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    return tree


def skin_pack_count(joints: int) -> int:
    """Number of FLOAT_COLOR attributes "skin_pack_<p>" that carry the dense weights of `joints` joints."""
    return (joints + 3) // 4


def skin_bake_tree(joint_names: Sequence[str], start: int = 0, stop: int | None = None) -> bpy.types.GeometryNodeTree:
    """The bake tree for one skeleton, built in one go (see `skin_bake_tree_steps`)."""
    gen = skin_bake_tree_steps(joint_names, start, stop)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def skin_bake_tree_steps(joint_names: Sequence[str], start: int = 0,
                         stop: int | None = None) -> Generator[None, None, bpy.types.GeometryNodeTree]:
    """The bake tree for joints [start, stop) of one skeleton (cached in the file by a hash of the joint
    names and the range), built in slices (a generator that yields between slices and returns the tree:
    ~100 ms for 104 joints in all). `start` is a multiple of 4 (the packing).

    Input: dense skin weights packed four joints per FLOAT_COLOR point attribute ("skin_pack_<p>" holds
    joints 4p..4p+3). One Store Named Attribute per joint, unrolled (a Repeat zone with an Index Switch
    for the names is ~1.5x slower: it re-evaluates a sparse top-k sum for every joint)."""
    stop = len(joint_names) if stop is None else min(stop, len(joint_names))
    if start % 4:
        raise ValueError(f"the bake range must start at a multiple of 4, got {start}")
    digest = hashlib.sha1(("\n".join(joint_names) + f"\n{start}:{stop}").encode()).hexdigest()[:12]
    for tree in bpy.data.node_groups:
        if tree.get("genlca_skin_key") == digest:
            return tree
    tree = _new_tree(SKIN_BAKE_TREE)
    nodes, links = tree.nodes, tree.links
    group_in, group_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    geometry = group_in.outputs[0]
    for p in range(start // 4, skin_pack_count(stop)):
        packed = nodes.new("GeometryNodeInputNamedAttribute")
        packed.data_type = "FLOAT_COLOR"
        packed.inputs["Name"].default_value = f"skin_pack_{p}"
        channels = nodes.new("FunctionNodeSeparateColor")
        links.new(packed.outputs["Attribute"], channels.inputs[0])
        if p % 8 == 7:
            yield
        for c, joint in enumerate(joint_names[4 * p:min(4 * p + 4, stop)]):
            store = nodes.new("GeometryNodeStoreNamedAttribute")
            store.data_type, store.domain = "FLOAT", "POINT"
            store.inputs["Name"].default_value = joint  # an existing vertex group: the store writes into it
            links.new(geometry, store.inputs["Geometry"])
            links.new(channels.outputs[c], store.inputs["Value"])
            geometry = store.outputs["Geometry"]
    links.new(geometry, group_out.inputs[0])
    tree["genlca_skin_key"] = digest  # only a finished tree is found again
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


def splat_tree() -> bpy.types.GeometryNodeTree:
    tree = bpy.data.node_groups.get(SPLAT_TREE)
    if tree is not None and tree.bl_idname == "GeometryNodeTree":
        return tree
    tree = _new_tree(SPLAT_TREE)
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
    rotation = nodes.new("GeometryNodeInputNamedAttribute")
    rotation.data_type = "QUATERNION"
    rotation.inputs["Name"].default_value = "rotation"
    scale = nodes.new("GeometryNodeInputNamedAttribute")
    scale.data_type = "FLOAT_VECTOR"
    scale.inputs["Name"].default_value = "scale"
    scaled = nodes.new("ShaderNodeVectorMath")
    scaled.operation = "SCALE"
    links.new(scale.outputs["Attribute"], scaled.inputs[0])
    links.new(group_in.outputs["Splat Size"], scaled.inputs["Scale"])
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    links.new(group_in.outputs["Geometry"], instance.inputs["Points"])
    links.new(material.outputs["Geometry"], instance.inputs["Instance"])
    links.new(rotation.outputs["Attribute"], instance.inputs["Rotation"])
    links.new(scaled.outputs["Vector"], instance.inputs["Scale"])
    links.new(instance.outputs["Instances"], group_out.inputs[0])
    return tree
