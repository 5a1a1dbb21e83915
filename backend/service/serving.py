"""`genlca-backend serve`: build the service from a ServiceConfig, load its model, bind and serve until a signal.

Apart from backend/service/cli.py because it needs the model code (torch); the `keys` command needs only zmq,
and cli.py imports this module only when it serves (docs/ARCHITECTURE.md, "The house").
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import zmq

from backend.pipelines.model_bundle import ModelError
from backend.pipelines.store import PersistentAvatarStore, default_avatar_dir
from backend.service.config import ServiceConfig
from backend.service.handlers import AvatarService, default_service
from backend.service.server import BackendServer
from bridge.wire.keys import read_authorized_clients


def build_service(avatar_dir: str | None = None, config: ServiceConfig | None = None) -> tuple[AvatarService, str]:
    """(AvatarService, description of where avatars are kept). With avatar_dir, avatars are also kept as
    files there (PersistentAvatarStore)."""
    if avatar_dir is None:
        return default_service(config=config), "avatars in memory only"
    store = PersistentAvatarStore(avatar_dir)
    return default_service(store=store, config=config), f"avatars kept in {store.folder}"


def serve(config: ServiceConfig) -> int:
    """Build the service of `config`, load its model, bind and serve until a signal; the exit status (2, with
    a line on stderr naming the problem, when a key file, the avatar folder, the model or the bind fails)."""
    clients = Path(config.keys_dir) / "authorized_clients" if config.keys_dir else None
    if clients is not None and clients.is_dir():   # before the model loads: a bad key file fails fast
        try:
            read_authorized_clients(clients)
        except ValueError as exc:
            print(f"genlca-backend: {exc}", file=sys.stderr)
            return 2
    avatar_dir = None if not config.persist else (config.avatar_dir or str(default_avatar_dir()))
    try:
        service, source = build_service(avatar_dir, config)
    except OSError as exc:
        print(f"genlca-backend: cannot use the avatar folder {avatar_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        model = service.bundle().describe()  # load now: a bad checkpoint is refused before serving
    except ModelError as exc:
        print(f"genlca-backend: cannot load the model: {exc}", file=sys.stderr)
        return 2
    source = f"model {model['name']} (sha256 {model['sha256']}, R={model['resolution']}), {source}"
    try:
        server = BackendServer(config.bind, service.handlers(), keys_dir=config.keys_dir or None,
                               queue_size=config.queue_size, max_message_bytes=config.max_message_bytes,
                               heartbeat_s=config.heartbeat_s, client_timeout_s=config.client_timeout_s,
                               send_hwm=config.send_hwm, max_queued_bytes=config.max_queued_bytes,
                               max_client_jobs=config.max_client_jobs, admission=config.check_request,
                               hello_extra=service.hello_fields, max_unread_reply_bytes=config.max_unread_reply_bytes,
                               max_inbound_bytes=config.max_inbound_bytes)
    except (PermissionError, FileNotFoundError, ValueError) as exc:
        print(f"genlca-backend: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        print(f"genlca-backend: cannot bind {config.bind}: {exc}", file=sys.stderr)
        return 2
    stopping = []

    def on_signal(signum: int, frame: Any) -> None:
        if stopping:      # a second signal: do not wait for the running frame
            os.write(2, f"genlca-backend: signal {signum} again; exiting now\n".encode())
            os._exit(128 + signum)
        stopping.append(signum)
        logging.getLogger("genlca.backend").info("signal %d: stopping (jobs end with shutting_down; send it "
                                                 "again to exit at once)", signum)
        server.stop(join=False)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"genlca-backend: serving {source} on {server.address}", flush=True)
    server.serve_forever()
    return 0
