"""Subjects, headers and the stream: what forwarders and correlators agree on.

A forwarder publishes each line to ``wslog.lines.<token>`` (``analyzer.partition.subject_token``
of the line's key). The NATS server maps that subject onto a partition (a server-level mapping,
nats-server 2.9 and later; stream ``subject_transform`` needs 2.10)::

    mappings = { "wslog.lines.*": "wslog.part.{{partition(N,1)}}.{{wildcard(1)}}" }

and the stream captures ``wslog.part.>``. Correlator k of R consumes partition p when
``p % R == k``, one durable consumer per partition (``wslog-p<p>``), so that:

- N (partitions) is fixed by the server's mapping and must equal every correlator's
  ``--partitions``; choose it at least the largest replica count foreseen (R <= N).
- R (replicas) may change without touching the stream: a partition's consumer keeps its
  acknowledged floor, and its new owner resumes from there. During the change, stop the old
  owners first (both consuming one partition would count its connections twice).
"""

from __future__ import annotations

from analyzer.partition import subject_token

LINES = "wslog.lines"
PARTS = "wslog.part"
SOURCE = "Wslog-Source"  # the line's original source (pod or file), for per-source deframing
FRAMING = "Wslog-Framing"  # the source's framing hint, if any
OVERLONG = "Wslog-Overlong"  # a too-long line: its length in bytes; the payload is its head
MSG_ID = "Nats-Msg-Id"  # JetStream's de-duplication id


def line_subject(key: str) -> str:
    return f"{LINES}.{subject_token(key)}"


def partition_filter(partition: int) -> str:
    return f"{PARTS}.{partition}.>"


def consumer_name(partition: int) -> str:
    return f"wslog-p{partition}"


def server_config(partitions: int, *, listen: str, store_dir: str) -> str:
    """A nats-server configuration with JetStream and the partition mapping (tests, and the
    text the deployment's ConfigMap carries)."""
    mapping = f"{PARTS}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"
    return (
        f"listen: {listen}\n"
        f'jetstream {{ store_dir: "{store_dir}" }}\n'
        f'mappings = {{ "{LINES}.*": "{mapping}" }}\n'
    )


def nats_partition(token: str, partitions: int) -> int:
    """The partition nats-server's ``partition(N,1)`` gives ``token`` (FNV-1a 32 bits mod N), for
    measuring skew without a server (tests/test_nats_restart.py finds the partition holding a
    line with it, and fails if the real server put that line elsewhere)."""
    h = 0x811C9DC5
    for byte in token.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions
