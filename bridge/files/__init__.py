"""Files both sides write or read: `atomic` (write_atomic), `png` (8-bit RGB/RGBA frames) and `avatar`
(the GenLCA avatar .safetensors and the 3DGS .ply, in numpy). numpy + stdlib."""
