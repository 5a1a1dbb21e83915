"""Perception of people in photos and videos, shared by photo -> avatar and the training stack's ingest.

`media` reads files (and holds the named errors), `detector` finds people (MediaPipe landmarks and masks),
`fitting` fits the body template to them, `observation` turns a fitted person into what the models take
(a reference crop, tokenizer inputs). Heavy dependencies (mediapipe, cv2, av) load only when used.
"""
