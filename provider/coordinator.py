"""The coordinator's HTTP API as the provider uses it (docs/marketplace.md).

Synchronous ``requests`` calls, run by the daemon in threads: one keep-alive session
for short calls and another for the long poll, so a 25-second wait never holds the
connection an event or a heartbeat needs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

POLL_WAIT_S = 25  # the coordinator holds a poll this long (docs/marketplace.md)


class CoordinatorError(Exception):
    """A call to the coordinator failed; ``status`` is its HTTP status, None when unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def websocket_url(coordinator_url: str) -> str:
    """``ws(s)://<coordinator>/ws/provider/`` for an http(s) coordinator URL."""
    parts = urlsplit(coordinator_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"coordinator URL must be http(s): {coordinator_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/provider/", "", ""))


class CoordinatorClient:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token: str | None = None
        self.session = requests.Session()
        self.poll_session = requests.Session()
        # The coordinator is addressed directly; environment proxies are for browsing, not for this.
        self.session.trust_env = self.poll_session.trust_env = False

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        bearer: bool = False,
        timeout: float | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if bearer:
            if not self.token:
                raise CoordinatorError("not registered yet", 401)
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            response = (session or self.session).request(
                method, self.base_url + path, data=data, headers=headers, timeout=timeout or self.timeout
            )
        except requests.RequestException as exc:
            raise CoordinatorError(f"coordinator at {self.base_url} unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise CoordinatorError(
                f"{method} {path} answered {response.status_code}: {response.text[:300]}", response.status_code
            )
        return response

    def info(self) -> dict[str, Any]:
        """``GET /v1/coordinator``: its address, chain id, node URL and escrow rules."""
        return self._call("GET", "/v1/coordinator").json()

    def register(self, signed_auth: dict[str, Any], *, name: str, url: str, offers: list[dict[str, Any]]) -> str:
        body = {**signed_auth, "name": name, "url": url, "offers": offers}
        answer = self._call("POST", "/v1/providers/register", body=body).json()
        self.token = answer["token"]
        return answer["provider"]

    def poll(self) -> dict[str, Any] | None:
        """Wait for a job (up to ``POLL_WAIT_S``); the JOB, or None when none came."""
        response = self._call(
            "POST", "/v1/providers/poll", body={}, bearer=True, timeout=POLL_WAIT_S + 15, session=self.poll_session
        )
        if response.status_code == 204 or not response.content:
            return None
        return response.json().get("job")

    def job_event(self, job_id: str, message: dict[str, Any]) -> None:
        self._call("POST", f"/v1/providers/jobs/{quote(job_id, safe='')}/events", body=message, bearer=True)

    def heartbeat(self, active: int) -> None:
        self._call("POST", "/v1/providers/heartbeat", body={"active": active}, bearer=True)

    def close(self) -> None:
        self.session.close()
        self.poll_session.close()
