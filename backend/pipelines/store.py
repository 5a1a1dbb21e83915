"""Avatar stores: in memory by id (bounded, least recently used evicted), optionally backed by files."""
from __future__ import annotations

import collections
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from backend.avatar.avatar_file import load_avatar, save_avatar

log = logging.getLogger("genlca.backend.store")


class AvatarStore:
    """A thread-safe LRU of avatars. Values are opaque (an avatar record, Gaussians, ...); `get` and `put`
    both count as a use. The oldest avatar is evicted when more than `capacity` are stored."""

    def __init__(self, capacity: int = 32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, avatar_id: str, avatar: Any) -> list[str]:
        """Store (or replace) an avatar; returns the ids evicted to make room."""
        if not isinstance(avatar_id, str) or not avatar_id:
            raise ValueError(f"avatar id must be a non-empty str, got {avatar_id!r}")
        with self._lock:
            self._items[avatar_id] = avatar
            self._items.move_to_end(avatar_id)
            evicted = []
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False)[0])
            return evicted

    def get(self, avatar_id: str) -> Any | None:
        with self._lock:
            avatar = self._items.get(avatar_id)
            if avatar is not None:
                self._items.move_to_end(avatar_id)
            return avatar

    def pop(self, avatar_id: str) -> Any | None:
        with self._lock:
            return self._items.pop(avatar_id, None)

    def ids(self) -> list[str]:
        """Ids from least to most recently used."""
        with self._lock:
            return list(self._items)

    def __contains__(self, avatar_id: object) -> bool:
        with self._lock:
            return avatar_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class PersistentAvatarStore(AvatarStore):
    """An AvatarStore that also keeps every avatar as `<folder>/<id>.safetensors`, so avatars outlive the
    backend process: a Blender scene saved today still renders after the backend restarts tomorrow.

    `put` writes the file atomically (backend.avatar.avatar_file.save_avatar: temporary name, then rename);
    `get` falls back to the file when the avatar is not in memory (evicted, or from an earlier run) and
    keeps it in memory again. Ids come from clients, so only ids of the form the service makes (hex, 6-64
    characters) ever reach the file system. At most `max_files` files are kept; the least recently used
    (by modification time, refreshed on every load) are deleted.

    Files are checked on load like wire arrays (bridge.files.avatar.read_avatar); a file that fails,
    or an entry that is not a regular file inside the folder (a symlink pointing out, a dangling link), is
    reported missing (not_found) with a warning, never served. Temporary files a killed save left behind
    (`.<name>.tmp`) are removed when the store opens.
    """

    ID_PATTERN = re.compile(r"[0-9a-f]{6,64}")

    def __init__(self, folder: str | os.PathLike, capacity: int = 32, max_files: int = 512) -> None:
        super().__init__(capacity)
        if max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {max_files}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._real_folder = self.folder.resolve()
        self.max_files = max_files
        self._disk_lock = threading.Lock()
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        for tmp in self.folder.glob(".*.tmp"):
            try:
                if tmp.is_symlink() or tmp.is_file():
                    tmp.unlink()
                    log.info("removed %s, left over from an interrupted save", tmp)
            except OSError as exc:
                log.warning("cannot remove the leftover %s: %s", tmp, exc)

    def _inside(self, path: Path) -> bool:
        """A regular file whose real path is directly in the folder (no symlink out, not dangling)."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        return real.parent == self._real_folder and real.is_file()

    def path(self, avatar_id: str) -> Path | None:
        """The file of an avatar id, or None for an id the service never makes."""
        if not isinstance(avatar_id, str) or not self.ID_PATTERN.fullmatch(avatar_id):
            return None
        return self.folder / f"{avatar_id}.safetensors"

    def put(self, avatar_id: str, avatar: Any) -> list[str]:
        path = self.path(avatar_id)
        if path is None:
            raise ValueError(f"avatar id {avatar_id!r} is not 6-64 lowercase hex digits")
        with self._disk_lock:
            save_avatar(path, avatar)
            self._prune()
        return super().put(avatar_id, avatar)

    def get(self, avatar_id: str) -> Any | None:
        avatar = super().get(avatar_id)
        if avatar is not None:
            return avatar
        path = self.path(avatar_id)
        if path is None:
            return None
        with self._disk_lock:
            if not path.exists() and not path.is_symlink():
                return None
            if not self._inside(path):
                log.warning("avatar entry %s is not a regular file inside %s (a symlink out, or dangling); "
                            "ignoring it", path, self.folder)
                return None
            try:
                avatar = load_avatar(path)
            except Exception as exc:  # damaged or inconsistent file: report as missing, keep serving
                log.warning("avatar file %s is unreadable (%s: %s); ignoring it", path, type(exc).__name__, exc)
                return None
            try:
                os.utime(path)
            except OSError:
                pass
        super().put(avatar_id, avatar)
        return avatar

    def pop(self, avatar_id: str) -> Any | None:
        path = self.path(avatar_id)
        if path is not None:
            with self._disk_lock:
                path.unlink(missing_ok=True)
        return super().pop(avatar_id)

    def _prune(self) -> None:
        """Keep at most max_files; entries that vanish meanwhile or dangle are skipped (with a warning)."""
        dated = []
        for entry in self.folder.glob("*.safetensors"):
            try:
                dated.append((entry.lstat().st_mtime if entry.is_symlink() else entry.stat().st_mtime, entry))
            except OSError as exc:
                log.warning("skipping avatar entry %s: %s", entry, exc)
        dated.sort(key=lambda item: item[0])
        for _, old in dated[:max(0, len(dated) - self.max_files)]:
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove old avatar %s: %s", old, exc)


def default_avatar_dir() -> Path:
    """$GENLCA_AVATAR_DIR, else $XDG_CACHE_HOME/genlca/avatars, else ~/.cache/genlca/avatars."""
    if os.environ.get("GENLCA_AVATAR_DIR"):
        return Path(os.environ["GENLCA_AVATAR_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "genlca" / "avatars"
