"""Avatars out of GenLCA for game engines: `gltf` writes a skinned, textured, animated glTF 2.0 binary in
numpy; `avatar_mesh` makes that mesh from the body template and an avatar's Gaussians; `python -m
backend.export` is the command line (docs/BLENDER.md, "Into game engines")."""
