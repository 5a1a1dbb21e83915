"""A client's persistent CURVE keypair, so that a backend's allow-list of client keys can name it.

    public, secret = load_or_create_client_keypair(folder)     # Z85 bytes, 40 characters each
    BridgeClient(address, server_public_key=..., client_public_key=public, client_secret_key=secret)

The pair lives in `folder/client.key_secret` (the zmq certificate format: `zmq.auth.load_certificate`
reads it) with 0600 permissions, and the public half in `folder/client.key` to hand to the server's
operator (`genlca-backend keys --keys-dir K --add-client NAME --public-key <Z85>`). Files are written to a
fresh temporary name created exclusively (`bridge.files.atomic.write_atomic`: nothing planted there is
followed) and renamed into place. Standard library and pyzmq only: the Blender add-on calls this.
"""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import zmq
from zmq.utils import z85

from bridge.files.atomic import write_atomic

SECRET_FILE = "client.key_secret"
PUBLIC_FILE = "client.key"
_Z85 = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_KEY_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$', re.MULTILINE)


def check_z85_key(key: str | bytes) -> bytes:
    """A CURVE key as 40 Z85 bytes; ValueError naming what is wrong otherwise."""
    if isinstance(key, str):
        if not key.isascii():   # encode("ascii", "replace") would turn each such character into a valid '?'
            bad = next(c for c in key if not c.isascii())
            raise ValueError(f"expected a 40-character Z85 CURVE key, got a non-ASCII character {bad!r} "
                             f"in {key[:60]!r}")
        raw = key.encode("ascii")
    else:
        raw = bytes(key)
    raw = raw.strip()
    if not _Z85.fullmatch(raw):
        raise ValueError(f"expected a 40-character Z85 CURVE key, got {raw[:60]!r} ({len(raw)} characters)")
    try:
        if len(z85.decode(raw)) != 32:
            raise ValueError
    except Exception:
        raise ValueError(f"{raw!r} is not valid Z85") from None
    return raw


def _certificate(public: bytes, secret: bytes | None, comment: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    kind = "Private" if secret is not None else "Public"
    lines = [f"#   ****  Generated on {stamp} by GenLCA  ****", f"#   ZeroMQ CURVE {kind} Certificate",
             f"#   {comment}", "", "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def write_public_certificate(path: str | os.PathLike, public: str | bytes, comment: str = "") -> None:
    """A zmq public certificate (what ThreadAuthenticator reads from authorized_clients/)."""
    write_atomic(path, _certificate(check_z85_key(public), None, comment or "public key"), durable=True)


def read_public_certificate(path: str | os.PathLike) -> bytes:
    """The public key of a zmq certificate as 40 Z85 bytes; ValueError naming the file and the problem (an
    empty file, no `public-key = "..."` line, a key that is not 40 Z85 characters)."""
    try:
        text = Path(path).read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an ASCII zmq certificate") from None
    found = dict(_KEY_LINE.findall(text))
    if "public" not in found:
        raise ValueError(f"{path}: no line public-key = \"<40 Z85 characters>\" "
                         f"({'the file is empty' if not text.strip() else f'{len(text)} bytes of something else'})")
    try:
        return check_z85_key(found["public"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_authorized_clients(folder: str | os.PathLike) -> dict[str, bytes]:
    """name -> public key (Z85 bytes) of every `NAME.key` in a server's authorized_clients folder.

    Fails closed and loud: ValueError naming every file that is not a valid public certificate, and when
    the folder holds no key at all (zmq's own loader skips a bad file, or drops the whole list on an
    exception, and the server then refuses every client while it says it serves). Files of other
    suffixes are not read (zmq reads only *.key); `ignored_files` lists them."""
    folder = Path(folder)
    keys: dict[str, bytes] = {}
    problems = []
    for path in sorted(folder.glob("*.key")):
        try:
            keys[path.stem] = read_public_certificate(path)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError(f"{len(problems)} bad client key file(s) in {folder}: " + "; ".join(problems)
                         + " (fix or remove each; `genlca-backend keys --add-client NAME --public-key Z85 "
                         "--replace` rewrites one)")
    if not keys:
        raise ValueError(f"{folder} holds no client key (NAME.key): every client would be refused; add one "
                         f"with `genlca-backend keys --add-client NAME --public-key Z85`, or remove the folder "
                         f"to accept any client key")
    return keys


def ignored_files(folder: str | os.PathLike) -> list[str]:
    """Names in an authorized_clients folder that are not read (not NAME.key)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix != ".key")


def read_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a zmq secret certificate; ValueError when it holds no valid pair."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    found = dict(_KEY_LINE.findall(text))
    if "public" not in found or "secret" not in found:
        raise ValueError(f"{path} holds no public-key/secret-key pair")
    public, secret = check_z85_key(found["public"]), check_z85_key(found["secret"])
    if zmq.curve_public(secret) != public:
        raise ValueError(f"{path}: the public key does not belong to the secret key")
    return public, secret


def load_or_create_client_keypair(folder: str | os.PathLike) -> tuple[bytes, bytes]:
    """The client keypair kept in `folder` (made on first use, 0700 folder, 0600 secret file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret_path = folder / SECRET_FILE
    if secret_path.is_file() and not secret_path.is_symlink():
        return read_keypair(secret_path)
    if secret_path.is_symlink():
        raise ValueError(f"{secret_path} is a symlink; refusing to use or replace it")
    public, secret = zmq.curve_keypair()
    write_atomic(secret_path, _certificate(public, secret, "GenLCA client keypair; keep this file private"),
                 mode=0o600, durable=True)
    write_public_certificate(folder / PUBLIC_FILE, public, "GenLCA client public key: give it to the server's "
                             "operator (genlca-backend keys --add-client NAME --public-key ...)")
    return public, secret
