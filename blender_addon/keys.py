"""The add-on's one persistent CURVE client keypair, so that a backend's allow-list of client keys can name it.

Kept in Blender's user folder for this extension (`bpy.utils.extension_path_user(__package__, path="keys")`,
Blender 4.2+), never in the add-on's own folder (which an update replaces). The file format and its safe
writing are bridge.wire.keys' (`load_or_create_client_keypair`: a zmq secret certificate, 0600, written through
an exclusive temporary file). The public half is shown in the preferences to hand to the backend's
operator: `genlca-backend keys --keys-dir K --add-client NAME --public-key <Z85>`.
"""
from __future__ import annotations

import os

import bpy

from . import _bridge

_cache: dict[str, tuple[str, str]] = {}


def keys_folder() -> str:
    """Where the keypair lives: the extension's user folder, or Blender's user config folder when the
    add-on is not running as an extension (a repository checkout)."""
    try:
        return bpy.utils.extension_path_user(__package__, path="keys", create=True)
    except (ValueError, AttributeError):
        return bpy.utils.user_resource("CONFIG", path=os.path.join("genlca", "keys"), create=True)


def client_keypair() -> tuple[str, str]:
    """(public, secret) Z85 strings of this Blender user's client key, made on first use."""
    folder = keys_folder()
    if folder not in _cache:
        keys = _bridge.keys_module()  # needs pyzmq: imported on first use
        public, secret = keys.load_or_create_client_keypair(folder)
        _cache[folder] = (public.decode("ascii"), secret.decode("ascii"))
    return _cache[folder]


def client_public_key() -> str:
    """The public half, or a sentence saying why there is none (shown in the preferences)."""
    try:
        return client_keypair()[0]
    except Exception as exc:  # no pyzmq (wheels not installed), unreadable folder, a planted symlink ...
        return f"(no client key: {exc})"
