"""The partition of a key, one rule for every record this project places itself.

CRC-32 of the key modulo the partition count: deterministic across processes (unlike
Python's salted `hash`) and the rule of librdkafka's default (`consistent_random`)
partitioner for keyed records, so a record placed here lands where a confluent-kafka
producer left to itself would put the same key. The internal re-keying topics
(streams/runtime/repartition.py) and the checkpoint store (checkpoints.py, whose parts
must share their head's partition) use it.
"""

from __future__ import annotations

import zlib


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions`.

    Deterministic across processes and the same for every event type, so impressions
    and clicks of one campaign re-keyed by `campaign_id` meet in one partition number.

    >>> partition_for(b"exp-1", 4) == zlib.crc32(b"exp-1") % 4
    True
    """
    return zlib.crc32(key) % partitions
