"""The coordinator side of docs/marketplace.md, scripted for the provider's tests.

The real coordinator (app ``marketplace``) is a separate piece of work; this one does
exactly what the contract says the provider may rely on and records everything the
provider sends, so a test can dispatch a job, cancel it, drop the socket, refuse
websockets, and then look at what came back:

- ``GET /v1/coordinator``; ``POST /v1/providers/register`` checked with
  ``verify_provider_auth`` (purpose, coordinator, time, nonce replay), answering a token;
- ``/ws/provider/``: ``hello`` checked the same way (purpose "connect"), ``welcome`` or close
  4401/4403, then jobs and cancels pushed, provider messages recorded;
- ``POST /v1/providers/poll`` (Bearer, holds up to ``poll_wait`` seconds), ``.../events``,
  ``.../heartbeat``;
- ``GET /v1/chain/accounts/{address}``: a node's account read, so ``node_url`` can point here
  and a test can "pay" the provider by raising its balance.

It runs under uvicorn in a thread; tests call its methods from their own thread.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from chain.protocol.market import verify_provider_auth


class ScriptedCoordinator:
    def __init__(self, *, poll_wait: float = 2.0) -> None:
        self.key = Key.generate()
        self.address = self.key.address
        self.poll_wait = poll_wait
        self.websocket_enabled = True
        self.registrations: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []  # everything providers sent, with "_via" ws/http
        self.heartbeats: list[dict[str, Any]] = []
        self.ws_refusals = 0
        self.ws_closes: list[int | None] = []
        self.balances: dict[str, int] = {}
        self.account_reads = 0
        self.forget_registrations = False
        self._tokens: dict[str, str] = {}  # token -> provider address
        self._seen_nonces: set[str] = set()
        self._sockets: dict[str, WebSocket] = {}
        self._poll_queue: asyncio.Queue | None = None
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedCoordinator:
        app = Starlette(
            routes=[
                Route("/v1/coordinator", self._info),
                Route("/v1/providers/register", self._register, methods=["POST"]),
                Route("/v1/providers/poll", self._poll, methods=["POST"]),
                Route("/v1/providers/jobs/{job_id}/events", self._event, methods=["POST"]),
                Route("/v1/providers/heartbeat", self._heartbeat, methods=["POST"]),
                Route("/v1/chain/accounts/{address}", self._account),
                WebSocketRoute("/ws/provider/", self._websocket),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", ws="websockets-sansio", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="scripted-coordinator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the scripted coordinator did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def _serve(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._poll_queue = asyncio.Queue()
            await self._server.serve()

        asyncio.run(main())

    def stop(self) -> None:
        if self._server is not None:
            # A graceful exit: a long poll still waiting ends within poll_wait rather than being cancelled.
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def _call(self, coro_factory: Callable[[], Any], timeout: float = 10) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_factory(), self._loop).result(timeout)

    def _record(self, target: list, item: Any) -> None:
        with self._changed:
            target.append(item)
            self._changed.notify_all()

    # -- what tests call ----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; messages: {self.messages[-20:]}")
                self._changed.wait(min(remaining, 0.1))

    def connected(self, provider: str) -> bool:
        return provider in self._sockets

    def push(self, provider: str, message: dict[str, Any]) -> None:
        """Send a message on the provider's websocket."""

        async def send() -> None:
            await self._sockets[provider].send_text(json.dumps(message))

        self._call(send)

    def dispatch(self, provider: str, job: dict[str, Any]) -> None:
        self.push(provider, {"type": "job", "job": job})

    def cancel(self, provider: str, job_id: str) -> None:
        self.push(provider, {"type": "cancel", "job_id": job_id})

    def enqueue_poll_job(self, job: dict[str, Any]) -> None:
        self._call(lambda: self._poll_queue.put(job))

    def drop(self, provider: str) -> None:
        """Close the provider's websocket from the server side, as a restarting coordinator would."""

        async def close() -> None:
            await self._sockets[provider].close(code=1012)

        self._call(close)

    def job_messages(self, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("job_id") == job_id and (kind is None or m.get("type") == kind)]

    # -- HTTP ---------------------------------------------------------------------------------

    def _check_auth(self, signed: Any, purpose: str) -> dict[str, Any]:
        body = verify_provider_auth(signed, coordinator=self.address, purpose=purpose)
        if body["nonce"] in self._seen_nonces:
            raise ProtocolError("bad_signature", "nonce reused")
        self._seen_nonces.add(body["nonce"])
        return body

    def _bearer(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return self._tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None

    async def _info(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "address": self.address,
                "chain_id": "aitbc-test-1",
                "node_url": self.url,
                "min_escrow_blocks": 10,
                "min_fee": 1,
            }
        )

    async def _register(self, request: Request) -> JSONResponse:
        body = await request.json()
        try:
            auth = self._check_auth({"auth": body.get("auth"), "signature": body.get("signature")}, "register")
        except ProtocolError as exc:
            return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status_code=401)
        token = secrets.token_urlsafe(24)
        self._tokens = {t: p for t, p in self._tokens.items() if p != auth["provider"]}
        self._tokens[token] = auth["provider"]
        self._record(self.registrations, {**body, "_provider": auth["provider"]})
        return JSONResponse({"provider": auth["provider"], "token": token})

    async def _poll(self, request: Request) -> Response:
        provider = self._bearer(request)
        if provider is None:
            return JSONResponse({"error": {"code": "unauthorized", "message": "bad token"}}, status_code=401)
        try:
            job = await asyncio.wait_for(self._poll_queue.get(), timeout=self.poll_wait)
        except TimeoutError:
            return Response(status_code=204)
        return JSONResponse({"job": job})

    async def _event(self, request: Request) -> JSONResponse:
        provider = self._bearer(request)
        if provider is None:
            return JSONResponse({"error": {"code": "unauthorized", "message": "bad token"}}, status_code=401)
        message = await request.json()
        if message.get("job_id") != request.path_params["job_id"]:
            return JSONResponse({"error": {"code": "malformed", "message": "job id differs"}}, status_code=400)
        self._record(self.messages, {**message, "_via": "http", "_provider": provider})
        return JSONResponse({"ok": True})

    async def _heartbeat(self, request: Request) -> JSONResponse:
        provider = self._bearer(request)
        if provider is None:
            return JSONResponse({"error": {"code": "unauthorized", "message": "bad token"}}, status_code=401)
        self._record(self.heartbeats, {**(await request.json()), "_via": "http", "_provider": provider})
        return JSONResponse({"ok": True})

    async def _account(self, request: Request) -> JSONResponse:
        address = request.path_params["address"]
        self.account_reads += 1
        return JSONResponse({"address": address, "balance": self.balances.get(address, 0), "nonce": 0})

    # -- websocket ----------------------------------------------------------------------------

    async def _websocket(self, websocket: WebSocket) -> None:
        if not self.websocket_enabled:
            self.ws_refusals += 1
            with self._changed:
                self._changed.notify_all()
            await websocket.close(code=1008)  # before accept: an HTTP 403 to the handshake
            return
        await websocket.accept()
        hello = json.loads(await websocket.receive_text())
        try:
            auth = self._check_auth({"auth": hello.get("auth"), "signature": hello.get("signature")}, "connect")
        except ProtocolError:
            await websocket.close(code=4401)
            return
        provider = auth["provider"]
        if self.forget_registrations or provider not in self._tokens.values():
            await websocket.close(code=4403)
            return
        self._record(self.hellos, hello)
        await websocket.send_text(json.dumps({"type": "welcome", "provider": provider}))
        self._sockets[provider] = websocket
        with self._changed:
            self._changed.notify_all()
        code = None
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                if message.get("type") == "heartbeat":
                    self._record(self.heartbeats, {**message, "_via": "ws", "_provider": provider})
                else:
                    self._record(self.messages, {**message, "_via": "ws", "_provider": provider})
        except WebSocketDisconnect as exc:
            code = exc.code
        finally:
            if self._sockets.get(provider) is websocket:
                del self._sockets[provider]
            self._record(self.ws_closes, code)
