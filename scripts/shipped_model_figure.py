"""Samples of a model package (front and back): `python scripts/shipped_model_figure.py MODEL OUT.png STEPS GUIDANCE`
(docs/images/shipped_model_samples.png: checkpoints/genlca-tiny, 25 steps, guidance 4; seeds 0, 1, 2)."""
import sys, torch, numpy as np
from backend.pipelines.model_bundle import load_bundle
from backend.pipelines.generate import generate_tokens, SamplerSettings
from backend.avatar.tokens import decode
from backend.render import render, RenderOptions
from backend.render.camera import orbit_cameras
from bridge.png import write_png
b = load_bundle(sys.argv[1])
rows = []
for i, p in enumerate(["a woman in a red t-shirt and blue trousers", "a man with short black hair in a green hoodie and black shorts", "a woman with long blonde hair in a white dress"]):
    t, _ = generate_tokens(b, p, seed=i, settings=SamplerSettings(steps=int(sys.argv[3]), guidance=float(sys.argv[4])))
    with torch.no_grad():
        g = decode(t, b.layout, b.decoder)
        cams = orbit_cameras(2, 3.2, height=1.1, target=(0, 0, 0.88), fov=36, width=128, height_px=160, start_deg=-90)
        out = render(g, cams, options=RenderOptions(background=(1, 1, 1)))
    rows.append(np.concatenate([o for o in (out.rgb.numpy() * 255).astype(np.uint8)], 1))
img = np.concatenate(rows, 0)
write_png(sys.argv[2], np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1))
