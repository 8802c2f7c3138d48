"""Shared by the package's tests: a `fraud serve` process on a free port (the binary named by
FRAUD_BIN, or the workspace's debug build), ready when its /healthz answers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from typing import Any, Iterator

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FRAUD = os.environ.get("FRAUD_BIN", os.path.join(ROOT, "target", "debug", "fraud"))


class Service:
    """A running service: ``call(path, body)`` posts JSON with the development key."""

    def __init__(self, base: str, key: str, opener: urllib.request.OpenerDirector) -> None:
        self.base, self.key, self.opener = base, key, opener

    def call(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {self.key}",
                                              "Content-Type": "application/json"})
        return json.loads(self.opener.open(req, timeout=30).read())


@contextlib.contextmanager
def serve(data_dir: str, env: dict[str, str] | None = None, config: str | None = None) -> Iterator[Service]:
    """Starts `fraud serve` on its defaults (plus ``env`` and a ``config`` file's text) with
    its data under ``data_dir``; stops it on exit."""
    if not os.path.exists(FRAUD):
        pytest.fail(f"the fraud binary is not at {FRAUD} (set FRAUD_BIN)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [FRAUD, "serve", "--bind", f"127.0.0.1:{port}"]
    if config is not None:
        os.makedirs(data_dir, exist_ok=True)
        path = os.path.join(os.path.dirname(data_dir), "fraud.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config)
        args += ["--config", path]
    full_env = dict(os.environ, FRAUD_DATA_DIR=data_dir, **(env or {}))
    server = subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Straight to the local server, whatever proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(base + "/healthz", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(server.stdout.read() if server.stdout else "fraud serve stopped")
                if time.monotonic() > deadline:
                    pytest.fail("fraud serve did not answer /healthz within 60 s")
                time.sleep(0.05)
        with open(os.path.join(data_dir, "dev-api-key"), encoding="utf-8") as f:
            key = f.read().strip()
        yield Service(base, key, opener)
    finally:
        server.kill()
        server.wait()
