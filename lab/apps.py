"""The server application behind the server sidecar, in each behaviour a scenario asks for.

``echo`` is the reference walkthrough's websockets server; ``refuse`` and ``no-upgrade`` answer
the upgrade request with a plain HTTP response (403, or 200 without switching protocols); ``down``
listens on nothing, so the sidecar's connection to the app is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from lab.scenarios import AppMode


async def _echo(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in connection:
            await connection.send(message)


def _refuse(connection: ServerConnection, request: Request) -> Response:
    return connection.respond(HTTPStatus.FORBIDDEN, "websocket refused\n")


def _no_upgrade(connection: ServerConnection, request: Request) -> Response:
    return connection.respond(HTTPStatus.OK, "this endpoint does not speak websocket\n")


_PROCESS_REQUEST = {AppMode.REFUSE: _refuse, AppMode.NO_UPGRADE: _no_upgrade}


@contextlib.asynccontextmanager
async def run_app(mode: AppMode, port: int) -> AsyncIterator[None]:
    """Serve the application on 127.0.0.1:port for the duration of the block."""
    if mode is AppMode.DOWN:
        yield
        return
    async with serve(
        _echo,
        "127.0.0.1",
        port,
        process_request=_PROCESS_REQUEST.get(mode),
        ping_interval=None,
        close_timeout=2,
    ):
        yield
