"""Service health of each model version: traffic, errors, latency, confidence.

Semantics (defaults configurable in ServiceConfig):

- Tumbling event-time windows [start, start + window_ms) per
  (model_id, model_version), closed when the watermark reaches their end;
  one `inference_windows` row each, then the window is dropped.
- requests: events; errors: status "error"; error_rate = errors / requests.
- latency_p50/p95/p99 are EXACT: numpy.percentile (method "linear",
  Hyndman & Fan definition 7) over every latency of the window, errors
  included -- no histogram or sketch, so they equal what a query over the raw
  logs would compute.
- confidence_mean (exactly rounded sum, math.fsum) and low_confidence_ratio
  (share of confidences < low_confidence) over the events that carry a
  confidence; None when none does.
- Observations, entity "<model_id>/<model_version>", ts = window end:
    kind="service", metric="latency_p99": ms, n=requests
    kind="service", metric="error_rate": fraction, n=requests, p_value =
        min(1, 2 min(p_window, p_sequential)) (Bonferroni over two tests):
        p_window = P(X >= errors) for X ~ Binomial(requests,
        error_rate_baseline), the exact binomial test
        (operators.stats.binomial_sf_test) of this many errors if the true
        rate were the 1 % line -- the evidence of this window, however small;
        p_sequential = exp(-S), S the model version's CUSUM of the binomial
        log-likelihood ratio of `error_rate_alternative` against the line
        (operators.sequential_rates) -- the evidence accumulated over
        consecutive windows, so a sustained rise in a version of 20 requests a
        minute is caught within a few windows though no window is
        significant. Both are valid p-values at every window (the CUSUM's by
        Ville's inequality), so the rule's per-window budget holds.
    kind="service", metric="low_confidence_ratio": fraction, n=confidences
        (only when the window has confidences), p_value = the same exact
        test of the low-confidence count against `low_confidence_ratio_max`

The rules judge the value AND the p-value (`max_p_value`, derived from a
false-alarm budget: docs/monitors/service.md), so an overwhelming error
burst in a window of 30 requests alerts while a 2 % blip in 100 does not.

Every figure depends on the multiset of a window's events only, so any
arrival order within the allowed lateness gives the same rows.

State (typed, `operators.state`, format 2, `ServiceState`): the open windows,
by start then (model_id, model_version), each a `WindowState` Struct, and the
error-rate CUSUM's statistic per (model_id, model_version). Format 1
(positional window lists, "\x1f"-joined keys) is upgraded on restore.

The live window keeps latencies and confidences in array('d') (the value copied
in as the event is read), not in the Struct's lists: a list would keep each
event's float object alive, scattered in memory, and reading them back at the
window's close cost more than the whole window took before (measured: the
operator's CPU per message +6 %, all of it in `advance`). So the live window is
converted to its Struct, field by field by name, at a snapshot (about once a
second) and back at a restore.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from operators.base import Observation, Operator
from operators.drift_kernel import fsum
from operators.rules import FALSE_ALARM_BUDGET
from operators.rules import rule_spec as _rule
from operators.sequential_rates import BinomialCusum
from operators.state import StateCodec
from operators.stats import binomial_sf_test
from operators.windows import TumblingWindows, window_start
from schemas.events import InferenceLog
from schemas.rows import InferenceWindowRow


@dataclass(frozen=True)
class ServiceConfig:
    window_ms: int = 60_000
    low_confidence: float = 0.5
    error_rate_baseline: float = 0.01  # the error_rate observation's p-value is against this
    # the rate the accumulated evidence (CUSUM) is tuned to detect quickly
    error_rate_alternative: float = 0.05
    error_cusum_cap: float = 20.0  # nats of evidence kept (p = 2e-9): a quick resolve
    # the low_confidence_ratio observation's p-value is against this share (the rule's line)
    low_confidence_ratio_max: float = 0.6


#: a model version: (model_id, model_version)
Version = tuple[str, str]


class WindowState(msgspec.Struct):
    """One (model version, window) in a checkpoint: its requests, errors, every
    latency and confidence."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = []
    conf: list[float] = []


class ServiceWindow:
    """One (model version, window) while it is open (see the module docstring)."""

    __slots__ = ("conf", "errors", "latencies", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies = array("d")
        self.conf = array("d")

    def state(self) -> WindowState:
        return WindowState(
            requests=self.requests,
            errors=self.errors,
            latencies=self.latencies.tolist(),
            conf=self.conf.tolist(),
        )

    @classmethod
    def of(cls, state: WindowState) -> ServiceWindow:
        w = cls()
        w.requests, w.errors = state.requests, state.errors
        w.latencies = array("d", state.latencies)
        w.conf = array("d", state.conf)
        return w


class ServiceState(msgspec.Struct):
    """What a checkpoint keeps: the open windows and the error-rate CUSUMs."""

    windows: dict[int, dict[Version, WindowState]] = {}  # start -> version -> window
    error_cusum: dict[Version, float] = {}  # version -> S (absent: 0)


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """Format 1: windows as [start, "model\x1fversion", requests, errors, latencies,
    confidences]; the CUSUMs by joined key (absent before the CUSUM: no evidence)."""
    windows: dict[int, dict[Version, dict[str, Any]]] = {}
    for start, key, requests, errors, latencies, conf in old["windows"]:
        windows.setdefault(start, {})[_split(key)] = {
            "requests": requests,
            "errors": errors,
            "latencies": latencies,
            "conf": conf,
        }
    cusum = {_split(k): s for k, s in old.get("error_cusum", {}).items()}
    return {"windows": windows, "error_cusum": cusum}


def _split(key: str) -> Version:
    model_id, _, model_version = key.partition("\x1f")
    return model_id, model_version


CODEC = StateCodec("service", ServiceState, format=2, upgrades={1: _from_format_1})


SERVICE_WINDOWS_PER_DAY = 86_400_000 / ServiceConfig.window_ms  # judgements per model and day

# The default alert rules of the service monitor's observations, collected by
# operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "latency_p99",
        "service",
        "latency_p99",
        ">",
        {"warning": 500.0, "critical": 2000.0},
        "p99 latency of {entity} is {value:.0f} ms (line: {threshold:.0f} ms)",
        label="p99 latency",
        value_format="{:.0f} ms",
        min_samples=50,
    ),
    _rule(
        "error_rate",
        "service",
        "error_rate",
        ">",
        {"critical": 0.01},
        "error rate of {entity} is {value:.2%}, above {threshold:.0%}",
        label="error rate",
        value_format="{:.2%}",
        min_samples=30,
        false_alarm_budget=FALSE_ALARM_BUDGET,
        judgements_per_day=SERVICE_WINDOWS_PER_DAY,
        clear_windows=3,
    ),
    _rule(
        "low_confidence",
        "service",
        "low_confidence_ratio",
        ">",
        {"warning": 0.6},
        "{value:.0%} of {entity}'s predictions have low confidence",
        label="share of low-confidence predictions",
        value_format="{:.0%}",
        min_samples=30,
        false_alarm_budget=FALSE_ALARM_BUDGET,
        judgements_per_day=SERVICE_WINDOWS_PER_DAY,
        clear_windows=3,
    ),
]


class ServiceOperator(Operator):
    sources = ("inference-logs",)
    observes = (
        ("service", "latency_p99"),
        ("service", "error_rate"),
        ("service", "low_confidence_ratio"),
    )

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: ServiceConfig | None = None) -> None:
        super().__init__()
        self.config = config or ServiceConfig()
        self.windows: TumblingWindows[ServiceWindow] = TumblingWindows(
            self.config.window_ms, ServiceWindow
        )
        self.error_cusum: BinomialCusum[Version] = BinomialCusum(
            self.config.error_rate_baseline,
            self.config.error_rate_alternative,
            self.config.error_cusum_cap,
        )

    def feed(self, source: str, events: Sequence[InferenceLog]) -> None:
        size = self.config.window_ms
        at = self.windows.at
        # the windows this feed has met: the models' events interleave, so looking the
        # window up per event in a local dict beats `at` on every change (issue 18)
        met: dict[tuple[str, str, int], ServiceWindow] = {}
        for e in events:
            ts = e.ts
            here = (e.model_id, e.model_version, ts - ts % size)
            w = met.get(here)
            if w is None:
                w = met[here] = at((e.model_id, e.model_version), ts)
            w.requests += 1
            if e.status == "error":
                w.errors += 1
            w.latencies.append(e.latency_ms)
            c = e.confidence
            if c is not None:
                w.conf.append(c)

    def advance(self, watermark: int) -> None:
        for start, key, w in self.windows.pop_ending_until(watermark):
            self._emit(start, key, w)

    def _emit(self, start: int, key: Version, w: ServiceWindow) -> None:
        cfg = self.config
        model_id, model_version = key
        end = start + cfg.window_ms
        lat = np.frombuffer(w.latencies, dtype=np.float64)
        p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
        error_rate = w.errors / w.requests
        k = len(w.conf)
        conf_mean = low_ratio = None
        low = 0
        if k:
            conf = np.sort(np.frombuffer(w.conf, dtype=np.float64))
            conf_mean = fsum(conf) / k
            low = int(np.count_nonzero(conf < cfg.low_confidence))
            low_ratio = low / k
        self._out.add_row(
            InferenceWindowRow(
                window_start=start,
                window_end=end,
                model_id=model_id,
                model_version=model_version,
                requests=w.requests,
                errors=w.errors,
                error_rate=error_rate,
                latency_p50=p50,
                latency_p95=p95,
                latency_p99=p99,
                confidence_mean=conf_mean,
                low_confidence_ratio=low_ratio,
            ),
        )
        entity = f"{model_id}/{model_version}"
        common = {"ts": end, "window_start": start, "window_end": end}
        obs = self._out.observations
        obs.append(
            Observation(
                "service",
                entity,
                "latency_p99",
                p99,
                n=w.requests,
                details={"latency_p50": p50, "latency_p95": p95},
                **common,
            )
        )
        p_window = binomial_sf_test(w.errors, w.requests, cfg.error_rate_baseline)
        cusum = self.error_cusum.update(key, w.errors, w.requests)
        p_sequential = self.error_cusum.p_value(cusum)
        obs.append(
            Observation(
                "service",
                entity,
                "error_rate",
                error_rate,
                n=w.requests,
                details={
                    "errors": w.errors,
                    "requests": w.requests,
                    "p_window": p_window,
                    "p_sequential": p_sequential,
                    "cusum": cusum,
                },
                p_value=min(1.0, 2.0 * min(p_window, p_sequential)),
                **common,
            )
        )
        if k:
            obs.append(
                Observation(
                    "service",
                    entity,
                    "low_confidence_ratio",
                    low_ratio,  # type: ignore[arg-type]
                    n=k,
                    details={"confidence_mean": conf_mean, "low_confidence": low},
                    p_value=binomial_sf_test(low, k, cfg.low_confidence_ratio_max),
                    **common,
                )
            )

    def late_window(self, source: str, event: Any) -> int:
        return window_start(event.ts, self.config.window_ms)

    def snapshot(self) -> dict[str, Any]:
        windows = {
            start: {key: w.state() for key, w in bucket.items()}
            for start, bucket in self.windows.state().items()
        }
        return CODEC.dump(ServiceState(windows, self.error_cusum.state))

    def restore(self, state: dict[str, Any]) -> None:
        typed = CODEC.load(state)
        self.windows.load(
            {
                start: {key: ServiceWindow.of(w) for key, w in bucket.items()}
                for start, bucket in typed.windows.items()
            }
        )
        self.error_cusum.state = typed.error_cusum


__all__ = [
    "DEFAULT_RULES",
    "SERVICE_WINDOWS_PER_DAY",
    "ServiceConfig",
    "ServiceOperator",
    "ServiceState",
    "ServiceWindow",
    "WindowState",
]
