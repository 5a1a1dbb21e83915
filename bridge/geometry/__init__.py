"""Pure maths both sides share: `rotations` (quaternions and rotation matrices, numpy or torch) and
`cameras` (Blender camera -> OpenCV camera). numpy + stdlib."""
