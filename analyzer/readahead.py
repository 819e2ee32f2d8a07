"""Read ahead: an iterator run in a thread of its own, a few items ahead of its consumer.

``wslog analyze`` decodes its inputs (reading, deframing, JSON and regex decoding) while it
correlates what it decoded before: polars releases the interpreter lock while it works, so on
two cores the two stages overlap instead of taking turns. The order of the items is the
iterator's own; the consumer sees exactly what a plain loop would, an exception included, at
the same place (the item after the last one produced).

Each item must be a snapshot the producer does not change afterwards: anything the consumer
reads about the producer's state (a watermark, the bytes read so far) travels in the item, never
by asking the producer while it runs on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")
_POLL_S = 0.1  # how often a producer blocked on a full queue checks that it is still wanted
_JOIN_S = 1.0  # how long a consumer that stopped waits for a producer blocked in a read


@dataclass(frozen=True)
class _Item(Generic[T]):
    value: T


@dataclass(frozen=True)
class _Raised:
    error: BaseException


@dataclass(frozen=True)
class _End:
    pass


def read_ahead(produce: Callable[[], Iterator[T]], depth: int = 2) -> Generator[T, None, None]:
    """The items of ``produce()``, computed in a daemon thread at most ``depth`` items ahead.
    Closing the returned generator (a consumer that stops early, Ctrl-C) stops the thread and
    closes ``produce()``'s iterator there, so its ``finally`` blocks run (files are closed);
    a producer blocked in a read (a quiet pipe) is left to end with the process."""
    slots: queue.Queue[_Item[T] | _Raised | _End] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(message: _Item[T] | _Raised | _End) -> bool:
        while not stop.is_set():
            try:
                slots.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        items = produce()
        try:
            for value in items:
                if not put(_Item(value)):
                    return
            put(_End())
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="wslog-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            message = slots.get()
            if isinstance(message, _End):
                return
            if isinstance(message, _Raised):
                raise message.error
            yield message.value
    finally:
        stop.set()
        thread.join(_JOIN_S)
