"""The stream and the correlators' consumers: created when missing, resumed from the
acknowledged floor."""

from __future__ import annotations

from typing import Any

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from exporter.jetstream import subjects
from exporter.settings import NatsSettings

ACK_WAIT_S = 7 * 86_400.0  # never redelivered while running: a restart resumes from the floor


async def ensure_stream(js: Any, settings: NatsSettings) -> None:
    """The stream capturing every partition; one made elsewhere (replicas, limits) is kept."""
    try:
        await js.stream_info(settings.stream)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=settings.stream,
        subjects=[f"{subjects.PARTS}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.max_age_s,
        duplicate_window=settings.duplicate_window_s,
    )
    await js.add_stream(config)


async def resume_consumer(js: Any, settings: NatsSettings, partition: int) -> int:
    """Partition ``partition``'s durable consumer, delivering from the first unacknowledged
    message: the consumer of a previous run (a crash, a reschedule) is replaced by one starting
    right after its acknowledged floor, so what it had delivered but not acknowledged comes
    again at once and in order. Returns the first stream sequence it will deliver."""
    name = subjects.consumer_name(partition)
    start = 1
    try:
        info = await js.consumer_info(settings.stream, name)
        start = info.ack_floor.stream_seq + 1
        await js.delete_consumer(settings.stream, name)
    except NotFoundError:
        pass
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=subjects.partition_filter(partition),
        ack_policy=AckPolicy.ALL,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=-1,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
        opt_start_seq=start if start > 1 else None,
    )
    await js.add_consumer(settings.stream, config)
    return start
