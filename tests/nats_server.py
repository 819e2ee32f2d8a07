"""A real nats-server for the tests: JetStream and wslog's partition mapping, on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from exporter.jetstream.subjects import server_config

PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """A real nats-server with JetStream and the partition mapping, on a free port."""

    def __init__(self, tmp: Path, port: int | None = None, partitions: int = PARTITIONS) -> None:
        """On a free port, or on ``port`` (a restart on the same store)."""
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        conf = tmp / "nats.conf"
        listen = f"127.0.0.1:{self.port}"
        conf.write_text(server_config(partitions, listen=listen, store_dir=str(tmp / "js")))
        self.log = (tmp / "nats.log").open("ab")
        self.process = subprocess.Popen(
            ["nats-server", "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise AssertionError("nats-server did not start")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
