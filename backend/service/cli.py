"""`genlca-backend`: run the GenLCA service, or make its CURVE keys.

    genlca-backend serve [--bind tcp://127.0.0.1:5555] [--keys-dir DIR] [--max-message-mb 64] [--queue-size 16]
                         [--avatar-dir DIR | --no-persist] [--config service.yaml] [--set key=value ...]
    genlca-backend keys --keys-dir DIR [--name server]
    genlca-backend keys --keys-dir DIR --add-client NAME --public-key Z85 [--replace]   # allow one client key

Avatars are kept as files in --avatar-dir (default $GENLCA_AVATAR_DIR, else ~/.cache/genlca/avatars), so
the avatars of a saved Blender scene still render after the backend restarts; --no-persist keeps them in
memory only. Every setting is a field of backend.service.config.ServiceConfig: --config reads a YAML file
of them (the model: a package under checkpoints/, a folder or a dit .safetensors, default the shipped
genlca-small; device, socket, queue, limits), --set overrides single fields (e.g. --set model=/models/studio-v2),
and the flags above override both (each flag is the twin of one field: --bind bind, --keys-dir keys_dir,
--max-message-mb max_message_mb, --queue-size queue_size, --heartbeat-s heartbeat_s, --avatar-dir avatar_dir,
--no-persist persist=false).

`serve` loads the model before it binds: a missing, truncated or foreign checkpoint exits with status 2 and
a message naming the file and the problem. A non-loopback --bind needs --keys-dir with server keys; clients then need DIR/server.key.
With DIR/authorized_clients/ (made by `keys --add-client`), only the client public keys listed there get
in (read when the server starts; an empty or unreadable NAME.key there, or a folder without keys, stops
`serve` with status 2 and names the file). SIGTERM/SIGINT: jobs end with `shutting_down`, exit 0 once the worker
has stopped between frames; a second signal exits at once (status 128 + signal).

`keys` loads no torch (backend/service/serving.py, the serving code, is imported only to serve), and
`--public-key KEY` takes the next word as the key even when a Z85 key starts with '-'.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from pathlib import Path

import zmq
import zmq.auth

from backend.config import ConfigError, apply_overrides, load_config
from backend.service.config import ServiceConfig
from bridge.wire.keys import check_z85_key, read_public_certificate, write_public_certificate

# flag -> the ServiceConfig field it sets (a flag left out keeps the config file's value)
FLAG_FIELDS = {"bind": "bind", "keys_dir": "keys_dir", "max_message_mb": "max_message_mb",
               "queue_size": "queue_size", "heartbeat_s": "heartbeat_s", "avatar_dir": "avatar_dir"}


def service_config(args: argparse.Namespace) -> ServiceConfig:
    """--config, then --set, then the flags. Raises ConfigError (or ValueError from a bad value)."""
    config = load_config(args.config, ServiceConfig) if args.config else ServiceConfig()
    config = apply_overrides(config, args.set or [])
    flags = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    if args.no_persist:
        flags["persist"] = False
    return dataclasses.replace(config, **flags) if flags else config


CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def keys(args: argparse.Namespace) -> int:
    folder = Path(args.keys_dir)
    if args.add_client is not None or args.public_key is not None:
        return add_client(folder, args.add_client, args.public_key, args.replace)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), args.name)
    Path(secret).chmod(0o600)
    print(f"public key: {public}\nsecret key: {secret} (keep it private; give clients the public one)")
    return 0


def add_client(folder: Path, name: str | None, public_key: str | None, replace: bool = False) -> int:
    """Write folder/authorized_clients/NAME.key (a zmq public certificate) for one client's Z85 key. An
    existing NAME with another key is kept unless `replace` (the same key again is a no-op)."""
    if not name or not CLIENT_NAME.fullmatch(name):
        print(f"genlca-backend: --add-client needs a name of letters, digits, '_', '.', '-' (at most 64), "
              f"got {name!r}", file=sys.stderr)
        return 2
    try:
        key = check_z85_key(public_key or "")
    except ValueError as exc:
        print(f"genlca-backend: --public-key: {exc}", file=sys.stderr)
        return 2
    clients = folder / "authorized_clients"
    clients.mkdir(parents=True, exist_ok=True)
    path = clients / f"{name}.key"
    if path.exists() or path.is_symlink():
        try:
            current = read_public_certificate(path)
        except (OSError, ValueError):
            current = None
        if current == key:
            print(f"client {name!r} already may connect with public key {key.decode()} ({path})")
            return 0
        if not replace:
            print(f"genlca-backend: client {name!r} is already listed ({path}) with "
                  f"{'another key' if current else 'an unreadable file'}; pass --replace to overwrite it, or "
                  f"choose another name", file=sys.stderr)
            return 2
    write_public_certificate(path, key, comment=f"GenLCA client {name!r}, allowed by genlca-backend keys")
    assert zmq.auth.load_certificate(str(path))[0] == key
    print(f"client {name!r} may connect with public key {key.decode()} ({path}); restart the server to apply")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genlca-backend", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the backend service")
    d = ServiceConfig()   # the flags' defaults are the config's; a flag left out keeps the --config value
    s.add_argument("--bind", default=None, help=f"ZeroMQ endpoint (default: {d.bind})")
    s.add_argument("--keys-dir", default=None, help="folder with server.key_secret (CURVE); needed off loopback")
    s.add_argument("--max-message-mb", type=float, default=None,
                   help=f"largest message accepted, MiB (default: {d.max_message_mb:g})")
    s.add_argument("--queue-size", type=int, default=None, help=f"jobs waiting at most (default: {d.queue_size})")
    s.add_argument("--heartbeat-s", type=float, default=None,
                   help=f"heartbeat interval, seconds (default: {d.heartbeat_s:g})")
    s.add_argument("--avatar-dir", default=None,
                   help="keep avatars as files here (default: $GENLCA_AVATAR_DIR or ~/.cache/genlca/avatars)")
    s.add_argument("--no-persist", action="store_true", help="keep avatars in memory only")
    s.add_argument("--config", default=None, help="YAML file of service settings (ServiceConfig fields)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one service setting; repeatable")
    s.add_argument("--log-level", default="INFO")
    k = sub.add_parser("keys", help="create a CURVE keypair (NAME.key, NAME.key_secret)")
    k.add_argument("--keys-dir", required=True)
    k.add_argument("--name", default="server")
    k.add_argument("--add-client", metavar="NAME", default=None,
                   help="allow a client: write KEYS_DIR/authorized_clients/NAME.key from --public-key")
    k.add_argument("--public-key", metavar="Z85", default=None, help="the client's 40-character public key")
    k.add_argument("--replace", action="store_true", help="with --add-client: overwrite an existing NAME's key")
    return p


def key_values_attached(argv: list[str]) -> list[str]:
    """argv with every `--public-key VALUE` after the `keys` command written as `--public-key=VALUE`.

    A Z85 key may start with '-' (about one key in 85), and argparse takes such a token for an option and
    stops with "expected one argument"; joined to its flag, the value is always the key."""
    out = list(argv)
    start = out.index("keys") + 1 if "keys" in out else len(out)
    i = start
    while i < len(out):
        if out[i] == "--public-key" and i + 1 < len(out):
            out[i:i + 2] = [f"--public-key={out[i + 1]}"]
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = key_values_attached(sys.argv[1:] if argv is None else list(argv))
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "keys":
        return keys(args)
    try:
        config = service_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"genlca-backend: bad service config: {exc}", file=sys.stderr)
        return 2
    # The one import below the top of a module in the service, on purpose: serving needs torch and the model
    # code (seconds to import), `keys` only zmq, so `genlca-backend keys` runs without loading torch.
    from backend.service.serving import serve

    return serve(config)


if __name__ == "__main__":
    raise SystemExit(main())
