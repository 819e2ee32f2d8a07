"""The ``wslog`` command: the composition root that wires the analyzer and the exporter into one
typer app. Nothing else lives here, but the allocator's tuning, which must come first.

polars allocates with jemalloc, which reads ``_RJEM_MALLOC_CONF`` once, when polars is loaded:
so it is set here, before anything imports polars, unless the user set it. Freed pages are kept
30 s instead of 10 (decoding reuses the same large buffers chunk after chunk, and returning
them to the kernel only to fault them in again cost ``wslog analyze`` a fifth of its CPU in
system time) and two arenas instead of eight per core (fewer half-empty arenas holding memory,
so the peak stays where it was). Measured on 1M lines: 10.5 s -> 9.8 s, system time 2.8 s ->
1.4 s, peak RSS unchanged (README, Performance)."""

import os

ALLOCATOR = "dirty_decay_ms:30000,muzzy_decay_ms:30000,narenas:2"

os.environ.setdefault("_RJEM_MALLOC_CONF", ALLOCATOR)
