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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter, length_hint
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

        The same verdict as `decode` message by message (issue 18: overhead outside
        the operators). The common poll (every message valid and rightly keyed) takes
        no Python step per message: values and keys are read with `map`, the values
        decoded by one `list.extend(map(...))` until one fails, the keys compared as
        two lists (`_bulk_run`). A message the bulk decode fails on, a run whose keys
        do not all match, and a poll with a tombstone or a value over `max_bytes` go
        through `_decode_each`, the message-by-message loop, which gives the precise
        rejection.

        Both decode into the event's strict twin, where it has one
        (`schemas.events.STRICT_TWINS`),
        which msgspec validates in C, instead of the event, whose `__post_init__` checks
        in Python; what the twin accepts, the event's decoder accepts as an equal event,
        and the decoded twin is relabelled as that event (`__class__`: a subclass without
        fields or slots of its own, the same layout), so callers get the event's type.
        Whatever the twin refuses, an ISO timestamp included, goes through `decode`."""
        messages = messages if isinstance(messages, list) else list(messages)
        events: list[E] = []
        kept: list[M] = []
        values, keys = _values_and_keys(messages)
        try:  # a tombstone (None has no len) or an oversized value: see _decode_each
            bulk = max(map(len, values), default=0) <= self.max_bytes
        except TypeError:
            bulk = False
        if not bulk:
            self._decode_each(messages, rejected, events, kept)
            return events, kept
        remaining = iter(values)
        start, n = 0, len(messages)
        while start < n:
            end, taken = self._bulk_run(remaining, keys, start, n, events)
            if taken:
                kept += messages[start:end]
            else:  # a key that does not match, say: each of the run's messages alone
                self._decode_each(messages[start:end], rejected, events, kept)
            if end < n:  # the bulk decode failed on this one: its precise verdict
                self._decode_each(messages[end : end + 1], rejected, events, kept)
            start = end + 1
        return events, kept

    def _bulk_run(
        self, remaining: Iterator[bytes], keys: list[bytes | None], start: int, n: int, out: list[E]
    ) -> tuple[int, bool]:
        """Decode values from `remaining` (positioned at message `start`) with the
        strict decoder until one fails or they end; append the run's events to `out`
        when every key matches. Returns where the run ended (the failed message's
        index, or n) and whether its events were appended (not when a key did not
        match).

        `list.extend` keeps what it took before the decoder raised (CPython's
        listobject.c appends item by item); where it was not so, the run is shorter
        than the messages the iterator consumed, and the length hint tells."""
        run: list[E] = []
        try:
            run.extend(map(self._strict.decode, remaining))
        except Exception:  # that message goes to decode() for the reason
            end = n - 1 - length_hint(remaining)
        else:
            end = n
        if start + len(run) != end:
            return end, False  # the run is not known whole: message by message
        if self._relabel:
            event_type = self.event_type
            for event in run:
                event.__class__ = event_type
        if self.check_key:
            try:  # an absent (None) optional key field has no encode: message by message
                expected = list(map(str.encode, map(attrgetter(self.key_field), run)))
            except TypeError:
                return end, False
            if expected != keys[start:end]:
                return end, False
        out += run
        return end, True

    def _decode_each(
        self,
        messages: list[M],
        rejected: Callable[[M, Rejection], Any],
        events: list[E],
        kept: list[M],
    ) -> None:
        """Message by message, appending to `events` and `kept`: a message that decodes
        and whose key matches is taken without the two calls and the checks `decode`
        makes per message; any other (no value, too large, no key, undecodable, key
        mismatch) goes through `decode`, which gives its precise rejection."""
        decode = self._strict.decode
        event_type = self.event_type
        relabel = self._relabel
        check = self.check_key
        get_key = attrgetter(self.key_field)
        max_bytes = self.max_bytes
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


def _values_and_keys(messages: list[M]) -> tuple[list[Any], list[bytes | None]]:
    """Every message's value and key, read through the unbound accessors of their one
    class where they share one (librdkafka's Message: `map` calls them in C)."""
    kinds = set(map(type, messages))
    if len(kinds) == 1:
        kind = kinds.pop()
        return list(map(kind.value, messages)), list(map(kind.key, messages))
    return [m.value() for m in messages], [m.key() for m in messages]
