"""Supervisor for the local network started by ``python manage.py devnet``.

It prepares ``<data dir>/devnet/``, starts each part as its own process,
waits for each to answer its health check, and writes ``network.json``
(``interfaces.md``) once they all do, and again whenever a part stops or comes
back. SIGINT or SIGTERM to the devnet stops every process it started.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from django.conf import settings

logger = logging.getLogger("aitbc.devnet")


def write_secret_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_or_create_secret(path: Path, nbytes: int = 18) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_urlsafe(nbytes)
    write_secret_file(path, value + "\n")
    return value


@dataclass
class Part:
    """One process the devnet runs."""

    role: str
    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    info: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the child's lifetime)
        self.process = subprocess.Popen(
            self.argv,
            cwd=settings.BASE_DIR,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        try:
            return requests.get(self.health_url, timeout=2).status_code == 200
        except requests.RequestException:
            return False


class Devnet:
    def __init__(self, *, port: int, python: str = sys.executable) -> None:
        self.port = port
        self.python = python
        self.dir = settings.DATA_DIR / "devnet"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts: list[Part] = []
        self.network: dict = {}
        self._stopping = False

    def manage(self, *args: str) -> list[str]:
        return [self.python, "manage.py", *args]

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def add(self, part: Part) -> Part:
        self.parts.append(part)
        return part

    def start_all(self, timeout: float = 120.0) -> None:
        # Nodes first: the coordinator and the providers ask the chain for its state as soon as
        # they start, and a node that is not up yet turns those requests into 503s logged as errors.
        deadline = time.monotonic() + timeout
        self._start_and_wait([p for p in self.parts if p.role == "node"], deadline, timeout)
        self._start_and_wait([p for p in self.parts if p.role != "node"], deadline, timeout)

    def _start_and_wait(self, parts: list[Part], deadline: float, timeout: float) -> None:
        for part in parts:
            logger.info("starting %s %s: %s", part.role, part.name, " ".join(part.argv))
            part.start()
        waiting = list(parts)
        while waiting:
            if self._stopping:
                raise RuntimeError("stopped while starting")
            for part in list(waiting):
                if not part.running():
                    raise RuntimeError(
                        f"{part.role} {part.name} exited with code {part.process.returncode}; see {part.log_path}"
                    )
                if part.healthy():
                    logger.info("%s %s is up (pid %d)", part.role, part.name, part.pid)
                    waiting.remove(part)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                raise RuntimeError(f"not healthy after {timeout:.0f}s: {names}")
            if waiting:
                time.sleep(0.2)

    def write_network(self) -> None:
        network = dict(self.network)
        network["processes"] = [{"role": "devnet", "pid": os.getpid()}] + [
            {"role": p.role, "name": p.name, "pid": p.pid} for p in self.parts if p.running()
        ]
        write_json_atomic(self.dir / "network.json", network)

    def install_signal_handlers(self) -> None:
        def handler(signum, frame) -> None:
            self._stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def supervise(self, on_change=None) -> None:
        """Watch the parts until asked to stop; call ``on_change`` when one stops."""
        alive = {p.name: p.running() for p in self.parts}
        while not self._stopping:
            time.sleep(0.5)
            for part in self.parts:
                now = part.running()
                if now != alive[part.name]:
                    alive[part.name] = now
                    if not now:
                        logger.warning(
                            "%s %s (pid %s) exited with code %s",
                            part.role,
                            part.name,
                            part.pid,
                            part.process.returncode,
                        )
                    if on_change:
                        on_change()
                    self.write_network()

    def stop_all(self, timeout: float = 15.0) -> None:
        for part in reversed(self.parts):
            if part.running():
                part.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for part in reversed(self.parts):
            if part.process is None:
                continue
            try:
                part.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s %s did not stop in time; killing it", part.role, part.name)
                part.process.kill()
                part.process.wait()
