"""Pure maths both sides share: `cameras` (Blender camera -> OpenCV camera). numpy + stdlib."""
