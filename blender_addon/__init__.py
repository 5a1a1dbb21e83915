"""GenLCA for Blender: generate, edit, bind and render photorealistic 3D Gaussian avatars.

One module per concern (after Blender's pose_library add-on): preferences, properties, operators,
panels; plain-function modules that tests call without operators: session (the backend connection,
pumped by a timer), workflows, scene_import, binding, camera, render, export.
"""
from __future__ import annotations

from . import binding, operators, panels, preferences, properties, session

_modules = (preferences, properties, operators, panels, binding)


def register() -> None:
    for module in _modules:
        module.register()


def unregister() -> None:
    session.stop_timer()
    session.close_session()
    for module in reversed(_modules):
        module.unregister()
