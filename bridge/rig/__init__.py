"""Skeletons: `rigmaps` (bone-name maps between the template and common rigs) and `retarget` (drive the
template from another armature's posed bones). numpy + stdlib."""
