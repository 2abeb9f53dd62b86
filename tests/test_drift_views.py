"""The drift windows' derived views (issue 18): scoring from `numbers` / `counts` gives
exactly what scoring from the lists gives.

Reference: the same operator with every view removed before each advance, so each
window is scored from its lists (the code before the views). Inputs mix numbers,
integers and strings in every feature, regular and irregular features mappings,
small windows that are carried and merged, warm-ups and configured references."""

from __future__ import annotations

import contextlib
from array import array
from collections import Counter
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.drift import MAX_COUNTED, DriftConfig, DriftOperator, DriftWindow, _count
from operators.reference import PREDICTION, profile_feature
from schemas.events import InferenceLog
from tests.test_decode_fast import REFERENCES

VALUE = st.one_of(
    st.floats(-5, 5, allow_nan=False),
    st.integers(-3, 3),
    st.sampled_from(["A", "B", "C"]),
)


@st.composite
def logs(draw: st.DrawFn, n: int) -> list[InferenceLog]:
    out = []
    t = 1_795_000_200_000
    for i in range(n):
        t += draw(st.integers(0, 30_000))
        if draw(st.integers(0, 9)) > 2:
            features: dict[str, Any] = {
                "x1": draw(st.one_of(st.floats(-3, 3, allow_nan=False), st.just("oops"))),
                "x2": draw(st.floats(0, 20, allow_nan=False)),
                "cat": draw(st.one_of(st.sampled_from(["A", "B", "C"]), st.integers(0, 2))),
            }
        else:
            features = draw(st.dictionaries(st.sampled_from(["x1", "x2", "cat", "new"]), VALUE))
        out.append(
            InferenceLog(
                request_id=f"r{i}",
                ts=t - draw(st.integers(0, 10_000)),
                model_id=draw(st.sampled_from(["m1", "m2"])),
                model_version="v1",
                features=features,
                prediction=draw(st.one_of(st.floats(0, 1), st.sampled_from(["yes", "no"]))),
                latency_ms=1.0,
                status="ok",
                confidence=draw(st.one_of(st.none(), st.floats(0, 1))),
            )
        )
    return out


def _without_views(op: DriftOperator) -> None:
    windows = [w for _, _, w in op.windows.items()] + list(op.carry.values())
    for w in windows:
        w.numbers.clear()
        w.counts.clear()


def _outputs(op: DriftOperator) -> Any:
    out = op.collect()
    rows = {t: [repr(msgspec.structs.asdict(r)) for r in rs] for t, rs in out.rows.items()}
    return rows, [repr(o) for o in out.observations]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n=st.integers(1, 70),
    with_reference=st.booleans(),
    warmup=st.sampled_from([5, 30]),
    min_count=st.sampled_from([1, 4, 15]),
)
def test_scoring_from_views_equals_scoring_from_lists(
    data: st.DataObject, n: int, with_reference: bool, warmup: int, min_count: int
) -> None:
    events = data.draw(logs(n))
    cfg = DriftConfig(window_ms=60_000, min_count=min_count, warmup_events=warmup, pool_windows=3)
    refs = REFERENCES if with_reference else None
    fast, ref = DriftOperator(cfg, refs), DriftOperator(cfg, refs)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=5)))
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        batch = events[lo:hi]
        if not batch:
            continue
        fast.feed("inference-logs", batch)
        ref.feed("inference-logs", batch)
        assert fast.snapshot() == ref.snapshot()
        _without_views(ref)
        watermark = max(e.ts for e in events[:hi]) - 20_000
        fast.advance(watermark)
        ref.advance(watermark)
        assert _outputs(fast) == _outputs(ref)
    end = max(e.ts for e in events) + 20 * cfg.window_ms
    _without_views(ref)
    fast.advance(end)
    ref.advance(end)
    assert _outputs(fast) == _outputs(ref)
    assert fast.references == ref.references


def test_views_follow_the_lists() -> None:
    """An open window keeps a feature's numbers while they are numbers, then its
    counts; a reference's categorical feature its counts; too many distinct values
    or an unhashable one drop the count view; a restored window has none."""
    base = {"model_version": "v1", "latency_ms": 1.0, "status": "ok", "prediction": 0.5}
    op = DriftOperator(DriftConfig(window_ms=60_000), REFERENCES)
    ts = 1_795_000_200_000
    rows = [
        {"x1": 1.0, "x2": 2, "cat": "A"},
        {"x1": "s", "x2": 3.0, "cat": "B"},
        {"x1": 2.0, "x2": 4.0, "cat": "A"},
    ]
    for model in ("m1", "m2"):  # m1 has a reference, m2 an open window
        op.feed(
            "inference-logs",
            [
                InferenceLog(request_id=f"r{i}", ts=ts, model_id=model, features=f, **base)  # type: ignore[arg-type]
                for i, f in enumerate(rows)
            ],
        )
    windows = {m: w for _, m, w in op.windows.items()}
    m1, m2 = windows["m1"], windows["m2"]
    assert m1.counts == {"cat": {"A": 2, "B": 1}} and m1.numbers == {}
    assert list(m2.numbers) == ["x2", PREDICTION] and list(m2.numbers["x2"]) == [2.0, 3.0, 4.0]
    assert m2.counts == {"x1": {1.0: 1, "s": 1, 2.0: 1}, "cat": {"A": 2, "B": 1}}
    many = [{"cat": str(i)} for i in range(MAX_COUNTED + 1)]
    op.feed(
        "inference-logs",
        [
            InferenceLog(request_id=f"q{i}", ts=ts, model_id="m1", features=f, **base)  # type: ignore[arg-type]
            for i, f in enumerate(many)
        ],
    )
    assert "cat" not in m1.counts
    w = DriftWindow()
    w.values["x"] = []
    w.counts["x"] = Counter()
    _count(w, "x", w.counts["x"], [[1]])  # an unhashable value
    assert "x" not in w.counts
    restored = DriftOperator(DriftConfig(window_ms=60_000), REFERENCES)
    restored.restore(op.snapshot())
    assert all(not w.numbers and not w.counts for _, _, w in restored.windows.items())


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(-5, 5, allow_nan=False),
            st.just(float("nan")),
            st.integers(-3, 3),
            st.sampled_from(["A", "B", "C"]),
        ),
        max_size=40,
    )
)
def test_profile_from_a_view_equals_the_profile_from_the_list(values: list[Any]) -> None:
    """`profile_feature` given a warm-up's view of the values (array('d') of numbers,
    or their Counter) gives exactly the profile of the values alone."""
    expected = profile_feature(values, bins=4, sample_size=10, max_categories=2)
    views: list[Any] = [Counter(values)]
    with contextlib.suppress(TypeError):  # a str among them: no numbers view
        views.append(array("d", values))
    for view in views:
        got = profile_feature(values, bins=4, sample_size=10, max_categories=2, view=view)
        assert repr(got) == repr(expected)  # as text: NaN != NaN
