"""The forwarder: a node's lines onto NATS JetStream, each under its partition key.

``wslog exporter --source files --forward nats://...`` runs one per node. It correlates
nothing: it deframes and decodes only to compute each line's key (``analyzer.partition``), then
publishes every physical line unchanged (a CRI continuation goes with the line it continues), so
the correlator deframes and decodes it exactly as ``wslog analyze`` would. A line that is no
entry keys by its source: whichever correlator gets it counts it.

Delivery: each chunk is published and acknowledged by JetStream before the source's sink
returns, so the files source's saved offset (``--state-dir``) never passes an unpublished line.
After a restart the lines since the last saved offset are published again with the same
``Nats-Msg-Id`` (a digest of source and line, and how many identical lines of that source came
before it in this run), and JetStream drops them within its duplicate window. The cost of that
id: a line identical to one before the resume point (noise; Envoy's entries carry a request id
and a start time, CRI lines a nanosecond timestamp) may be counted twice after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import nats
import polars as pl
from nats.errors import NoRespondersError
from nats.js.errors import NoStreamResponseError

from analyzer.formats import FormatSet
from analyzer.framing import Deframer
from analyzer.lines import MAX_LINE_BYTES, Overlong
from analyzer.partition import BY_SOURCE, line_keys
from exporter.jetstream import subjects
from exporter.jetstream.stream import ensure_stream
from exporter.settings import NatsSettings
from exporter.sources import Chunk, Source, SourceError, SourceEvents

log = logging.getLogger("wslog.forward")
T = TypeVar("T")
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
REPEATS_KEPT = 100_000  # recent distinct lines whose copies are numbered


@dataclass
class ForwardStats:
    published: int = 0
    duplicates: int = 0  # dropped by JetStream: published before (a restart) or identical
    retries: int = 0  # publish attempts that failed and were retried


class PublishMeter(Protocol):
    """Where the forwarder reports what it did (``exporter.metrics.ForwarderMetrics``)."""

    def published(self, stored: int, duplicates: int) -> None: ...

    def failed(self, publications: int) -> None: ...

    def connected(self, ok: bool) -> None: ...


class NoMeter:
    def published(self, stored: int, duplicates: int) -> None:
        pass

    def failed(self, publications: int) -> None:
        pass

    def connected(self, ok: bool) -> None:
        pass


class LoggedEvents:
    """The forwarder's ``SourceEvents``: it serves no metrics, so its streams' life is logged."""

    def stream_opened(self, kind: str, source: str) -> None:
        log.info("following %s", source)

    def stream_closed(self, kind: str, source: str) -> None:
        log.info("closed %s", source)

    def stream_restarted(self, kind: str, source: str, reason: str) -> None:
        log.info("reopened %s (%s)", source, reason)

    def health(self, ok: bool, reason: str) -> None:
        if not ok:
            log.warning("source unhealthy: %s", reason)


class Forwarder:
    """Runs ``source`` and publishes its lines until it ends or ``stop`` is set."""

    def __init__(
        self,
        settings: NatsSettings,
        formats: FormatSet,
        max_line_bytes: int = MAX_LINE_BYTES,
        meter: PublishMeter | None = None,
    ) -> None:
        self.settings = settings
        self.formats = formats
        self.max_line_bytes = max_line_bytes
        self.stats = ForwardStats()
        self.meter = meter or NoMeter()
        self._ready = (False, "connecting to NATS")
        self._deframers: dict[str, Deframer] = {}
        self._repeats: OrderedDict[str, int] = OrderedDict()  # a line's earlier copies
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._nc: Any = None

    def run(self, source: Source, stop: threading.Event, events: SourceEvents) -> ForwardStats:
        self._stop = stop
        thread = threading.Thread(target=self._loop.run_forever, name="wslog-nats", daemon=True)
        thread.start()
        try:
            self._call(self._connect())
            source.run(self.publish_chunk, stop, events)
        finally:
            if self._nc is not None:
                self._call(self._nc.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(5)
            self._loop.close()
        return self.stats

    def readiness(self) -> tuple[bool, str]:
        """/readyz: connected to NATS and the stream exists (else why not)."""
        return self._ready

    def _set_ready(self, ok: bool, reason: str = "") -> None:
        self._ready = (ok, reason)
        self.meter.connected(ok)

    def publish_chunk(self, chunk: Chunk) -> None:
        """The source's sink: every line of ``chunk`` published (and stored) before it returns."""
        keys = self._keys(chunk)
        messages = [
            self._message(chunk, line, key) for line, key in zip(chunk.lines, keys, strict=True)
        ]
        self._call(self._publish_all(messages))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _connect(self) -> None:
        url = self.settings.url

        async def disconnected() -> None:
            self._set_ready(False, f"disconnected from NATS at {url}, reconnecting")

        async def reconnected() -> None:
            self._set_ready(True)

        try:
            self._nc = await nats.connect(
                url,
                connect_timeout=self.settings.connect_timeout_s,
                max_reconnect_attempts=-1,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            )
        except Exception as exc:  # nats raises OSError, TimeoutError and its own errors
            self._set_ready(False, f"cannot reach NATS at {url}")
            raise SourceError(f"cannot reach NATS at {url}: {exc}", retryable=True) from exc
        await ensure_stream(self._nc.jetstream(), self.settings)
        self._set_ready(True)

    def _keys(self, chunk: Chunk) -> list[str]:
        """One key per physical line: its logical line's (a continuation takes the key of the
        line it continues, the latest started before it in this chunk), else its source's."""
        deframer = self._deframers.get(chunk.source)
        if deframer is None:
            deframer = Deframer(chunk.source, None, self.max_line_bytes)
            self._deframers[chunk.source] = deframer
        first = deframer.lines_seen + 1
        framed = deframer.feed_lines(chunk.lines)
        keyed = line_keys(framed.lines, self.formats).sort("line_no")
        physical = pl.DataFrame({"line_no": range(first, first + len(chunk.lines))})
        joined = physical.join_asof(keyed, on="line_no", strategy="backward")
        fallback = BY_SOURCE + chunk.source
        return [k or fallback for k in joined.get_column("partition_key").to_list()]

    def _message(
        self, chunk: Chunk, line: str | Overlong, key: str
    ) -> tuple[str, bytes, dict[str, str]]:
        headers = {subjects.SOURCE: chunk.source}
        if chunk.framing:
            headers[subjects.FRAMING] = chunk.framing
        if isinstance(line, Overlong):
            payload = line.head
            headers[subjects.OVERLONG] = str(line.length)
        else:
            payload = line.encode("utf-8", "surrogateescape")
        digest = hashlib.blake2b(digest_size=16)
        digest.update(chunk.source.encode("utf-8", "surrogateescape") + b"\n")
        digest.update(payload + headers.get(subjects.OVERLONG, "").encode())
        content = digest.hexdigest()
        repeat = self._repeats.get(content, 0)
        self._repeats[content] = repeat + 1
        self._repeats.move_to_end(content)
        if len(self._repeats) > REPEATS_KEPT:
            self._repeats.popitem(last=False)
        headers[subjects.MSG_ID] = f"{content}.{repeat}"
        return subjects.line_subject(key), payload, headers

    async def _publish_all(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
        js = self._nc.jetstream()
        todo = messages
        for attempt in range(1_000_000):
            results = await asyncio.gather(
                *(js.publish(s, p, headers=h) for s, p, h in todo), return_exceptions=True
            )
            failed = []
            stored = duplicates = 0
            for message, result in zip(todo, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(message)
                    error = result
                elif result.duplicate:
                    duplicates += 1
                else:
                    stored += 1
            self.stats.published += stored + duplicates
            self.stats.duplicates += duplicates
            self.meter.published(stored, duplicates)
            if not failed:
                return
            self.stats.retries += len(failed)
            self.meter.failed(len(failed))
            self._explain(error)
            if self._stop.is_set():
                raise SourceError(f"stopping with {len(failed)} lines unpublished", retryable=True)
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            todo = failed

    def _explain(self, error: BaseException) -> None:
        if isinstance(error, NoRespondersError | NoStreamResponseError):
            log.warning(
                "no JetStream stream takes %s.*: give the NATS server the mapping %s.* -> "
                "%s.{{partition(N,1)}}.{{wildcard(1)}} (exporter/jetstream/subjects.py)",
                subjects.LINES,
                subjects.LINES,
                subjects.PARTS,
            )
        else:
            log.warning("publishing to NATS failed, retrying: %s", error)
