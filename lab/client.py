"""The client application: the reference walkthrough's ``python3 -m websockets`` session.

It dials the Service name through the client sidecar (the TCP connection goes to the sidecar's
port; the URL, hence Host, is the Service's), sends ``hello`` and ``world``, reads both echoes and
closes with 1000. What it saw is recorded, including a handshake that did not succeed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.http11 import Response

from lab.envoy_config import FQDN, SERVICE_PORT
from lab.scenarios import GATEWAY_HOST, ClientMode, Front, Scenario

MESSAGES = ("hello", "world")
STEP_TIMEOUT_S = 5.0
HOLD_TICK_S = 0.5


@dataclass(frozen=True)
class ConnectionResult:
    url: str
    status: int | None
    echoes: tuple[str, ...]
    close_code: int | None
    error: str | None


def url_for(scenario: Scenario, index: int) -> str:
    """The Service's name through a sidecar, the Gateway's host through a gateway."""
    usual = GATEWAY_HOST if scenario.front is Front.GATEWAY else FQDN
    return f"ws://{scenario.host or usual}:{SERVICE_PORT}/{scenario.name}/{index}"


def _recording(statuses: list[int]) -> type[ClientConnection]:
    """A connection class that remembers the handshake response's status, even a failed one."""

    class Recording(ClientConnection):
        def process_event(self, event: Any) -> None:
            if isinstance(event, Response):
                statuses.append(event.status_code)
            super().process_event(event)

    return Recording


async def _exchange(ws: ClientConnection, message: str) -> str:
    await ws.send(message)
    reply = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT_S)
    return reply if isinstance(reply, str) else reply.decode(errors="replace")


async def _hold(ws: ClientConnection, scenario: Scenario, echoes: list[str]) -> None:
    """Keep the connection open ``hold_ms``; a ``hold`` client sends a tick every half second."""
    if scenario.client is not ClientMode.HOLD:
        await asyncio.sleep(scenario.hold_ms / 1000)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scenario.hold_ms / 1000
    while loop.time() < deadline:
        await asyncio.sleep(HOLD_TICK_S)
        echoes.append(await _exchange(ws, "tick"))


async def _converse(ws: ClientConnection, scenario: Scenario, echoes: list[str]) -> None:
    for message in MESSAGES:
        echoes.append(await _exchange(ws, message))
    if scenario.client is ClientMode.DROP:
        ws.transport.abort()
        return
    await _hold(ws, scenario, echoes)
    await asyncio.wait_for(ws.close(1000), STEP_TIMEOUT_S)


async def run_connection(scenario: Scenario, sidecar_port: int, index: int) -> ConnectionResult:
    """One WebSocket through the client sidecar, as the scenario's client behaves."""
    url = url_for(scenario, index)
    statuses: list[int] = []
    echoes: list[str] = []
    close_code: int | None = None
    error: str | None = None
    try:
        async with connect(
            url,
            host="127.0.0.1",
            port=sidecar_port,
            proxy=None,
            open_timeout=STEP_TIMEOUT_S,
            ping_interval=None,
            close_timeout=STEP_TIMEOUT_S,
            create_connection=_recording(statuses),
        ) as ws:
            await _converse(ws, scenario, echoes)
            close_code = ws.close_code
    except InvalidStatus as exc:
        error = f"handshake answered {exc.response.status_code}"
    except (WebSocketException, OSError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return ConnectionResult(
        url, statuses[0] if statuses else None, tuple(echoes), close_code, error
    )


async def run_client(scenario: Scenario, sidecar_port: int) -> tuple[ConnectionResult, ...]:
    """All of the scenario's connections, concurrently."""
    tasks = [run_connection(scenario, sidecar_port, i) for i in range(scenario.connections)]
    return tuple(await asyncio.gather(*tasks))
