"""Strict, fast decoding of input messages (msgspec typed decode; its cost per
message is in BENCHMARKS.md).

`Decoder.decode` turns one Kafka message value into a typed event or a
`Rejection` with a short reason code and a precise human reason; callers send
rejections to the dead-letter topic.

Nothing here raises on bad input, whatever its bytes: besides msgspec's own
`DecodeError`, decoding can raise `UnicodeDecodeError` (invalid UTF-8 inside a
JSON string), `RecursionError` (arrays or objects nested deeper than the
interpreter's stack allows, e.g. 100k levels of `[`) and, in principle, any
exception of a validation hook. Every one of them rejects that one message
(reasons `invalid_utf8`, `too_deep`, `decode_failed`), never the batch: a
list of known exceptions would let the next unknown one kill consumption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from schemas.events import INPUT_EVENTS, KEY_FIELD, STRICT_TWINS, Event

MAX_MESSAGE_BYTES = 256 * 1024
# Human error texts are bounded: some embed input (a key, a timestamp string)
# and they travel in dead letters whose size is bounded too.
MAX_ERROR_CHARS = 1000

E = TypeVar("E", bound=Event)


class Message(Protocol):
    """What `Decoder.decode_batch` reads of a message (confluent_kafka.Message,
    streams.runtime.pipeline.RawMessage)."""

    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # short code, e.g. "missing_field"; a Prometheus label
    error: str  # the precise human reason


def _short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unexpected(exc: BaseException) -> Rejection:
    """The rejection of a message whose decoding raised something else than msgspec's errors."""
    if isinstance(exc, UnicodeError):
        return Rejection("invalid_utf8", _short(f"invalid UTF-8 in a JSON string: {exc}"))
    if isinstance(exc, RecursionError):
        return Rejection("too_deep", "JSON is nested too deeply to decode")
    return Rejection("decode_failed", _short(f"{type(exc).__name__}: {exc}"))


def _classify(message: str) -> str:
    if message.startswith("JSON is malformed") or message.startswith("Input data was truncated"):
        return "invalid_json"
    if message.startswith("Object missing required field"):
        return "missing_field"
    if message.startswith("Expected") and ", got `" in message:
        return "wrong_type"
    if message.startswith("ts "):
        return "bad_timestamp"
    if message.startswith("unsupported event version"):
        return "unsupported_version"
    if "is beyond the sensor value bound" in message:
        return "out_of_range"
    return "invalid_value"


class Decoder(Generic[E]):
    """Decoder for one input topic: checks size, JSON, types, values and the key."""

    def __init__(
        self,
        topic: str,
        max_bytes: int = MAX_MESSAGE_BYTES,
        *,
        key_field: str | None = None,
        check_key: bool = True,
    ) -> None:
        """`key_field`: the field the key must equal (default: the topic's, `KEY_FIELD`);
        `check_key=False`: accept any key (keying `repartition`: the worker re-keys
        the events itself, see `streams.runtime.repartition`)."""
        self.topic = topic
        self.event_type: type[E] = INPUT_EVENTS[topic]  # type: ignore[assignment]
        self.key_field = key_field or KEY_FIELD[topic]
        self.check_key = check_key
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(self.event_type)
        # the fast path of `decode_batch`: the event's strict twin (schemas.events), all of
        # whose checks run in msgspec's C decoder; an event without one, its own decoder
        twin = STRICT_TWINS.get(self.event_type)
        self._strict = self._decoder if twin is None else msgspec.json.Decoder(twin)
        self._relabel = twin is not None

    def decode(self, value: bytes | None, key: bytes | None) -> E | Rejection:
        """The event, or a Rejection; never raises for any `value` and `key`."""
        try:
            return self._decode(value, key)
        except Exception as exc:  # any failure rejects this one message, whatever it is
            return _unexpected(exc)

    def _decode(self, value: bytes | None, key: bytes | None) -> E | Rejection:
        if value is None:
            return Rejection("empty_value", "message has no value (tombstone)")
        if len(value) > self.max_bytes:
            return Rejection(
                "too_large", f"message is {len(value)} bytes, over the {self.max_bytes}-byte limit"
            )
        try:
            event = self._decoder.decode(value)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            text = str(exc)
            return Rejection(_classify(text), _short(text))
        if not self.check_key:
            return event
        expected = getattr(event, self.key_field) or ""  # an optional key field may be absent
        if not key:
            return Rejection(
                "empty_key", f"message key is empty; {self.topic} must be keyed by {self.key_field}"
            )
        if key != expected.encode():
            # A mis-keyed event lands on another partition than its peers, which
            # would silently break the impression-click join and per-key state.
            shown = key[:200].decode(errors="replace") + ("…" if len(key) > 200 else "")
            return Rejection(
                "key_mismatch",
                _short(f"message key {shown!r} differs from {self.key_field} {expected!r}"),
            )
        return event

    def decode_batch(
        self, messages: Iterable[M], rejected: Callable[[M, Rejection], Any]
    ) -> tuple[list[E], list[M]]:
        """Decode a poll's messages of this topic: (events, their messages), in order;
        each rejected message goes to `rejected(message, rejection)` as it is met.

        The same verdict as `decode` message by message, in one loop: a message that
        decodes and whose key matches is taken without the two calls and the checks
        `decode` makes per message (issue 18: overhead outside the operators); any
        other (no value, too large, no key, undecodable, key mismatch) goes through
        `decode`, which gives its precise rejection.

        The fast path decodes into the event's strict twin, where it has one
        (`schemas.events.STRICT_TWINS`),
        which msgspec validates in C, instead of the event, whose `__post_init__` checks
        in Python; what the twin accepts, the event's decoder accepts as an equal event,
        and the decoded twin is relabelled as that event (`__class__`: a subclass without
        fields or slots of its own, the same layout), so callers get the event's type.
        Whatever the twin refuses, an ISO timestamp included, goes through `decode`."""
        decode = self._strict.decode
        event_type = self.event_type
        relabel = self._relabel
        check = self.check_key
        get_key = attrgetter(self.key_field)
        max_bytes = self.max_bytes
        events: list[E] = []
        kept: list[M] = []
        take, keep = events.append, kept.append
        for m in messages:
            value = m.value()
            key = m.key()
            if value is not None and len(value) <= max_bytes and (key or not check):
                try:
                    event = decode(value)
                except Exception:  # decode() below names the reason
                    pass
                else:
                    if relabel:
                        event.__class__ = event_type
                    if not check:
                        take(event)
                        keep(m)
                        continue
                    expected = get_key(event)
                    if expected is not None and key == expected.encode():
                        take(event)
                        keep(m)
                        continue
            result = self.decode(value, key)
            if result.__class__ is Rejection:
                rejected(m, result)  # type: ignore[arg-type]
            else:
                take(result)  # type: ignore[arg-type]
                keep(m)
        return events, kept
