"""Change detection on the window metrics other operators emit.

`ChangeDetectors` is not an operator: it sits behind one (see
`operators.task.MonitorTask`) and watches the Observations it emits, one
series per (kind, metric, entity), e.g. the `ctr` of campaign c1 window after
window. Each series runs one detector per method:

- Page-Hinkley (Page, E. S. (1954), "Continuous inspection schemes",
  Biometrika 41(1/2):100-115; Hinkley, D. V. (1971), "Inference about the
  change-point from cumulative sum tests", Biometrika 58(3):509-523), as
  `river.drift.PageHinkley`. With x_bar_t the running mean of the inputs
  since the last reset, delta the magnitude of change tolerated and alpha
  the forgetting factor,

      U_t = alpha * U_{t-1} + (x_t - x_bar_t - delta),   m_t = min_{i<=t} U_i
      L_t = alpha * L_{t-1} + (x_t - x_bar_t + delta),   M_t = max_{i<=t} L_i

  a change is signalled when U_t - m_t > threshold (a rise) or
  M_t - L_t > threshold (a fall), once min_instances points were seen;
  the detector then starts afresh. A CUSUM: with inputs in units of the
  noise's standard deviation, delta ~ half the smallest shift worth
  detecting, and the threshold sets the false-alarm rate.

- ADWIN, ADaptive WINdowing (Bifet, A. & Gavaldà, R. (2007), "Learning from
  time-changing data with adaptive windowing", SIAM SDM, 443-448), as
  `river.drift.ADWIN`. It keeps the longest recent window W in which the
  mean has not changed: whenever some split W = W0 . W1 (n0, n1 points, both
  at least L = min_window_length) has |mean(W0) - mean(W1)| > eps_cut, with
  sigma^2 the variance of W, delta' = delta / ln |W| and
  1/m = 1/(n0 - L + 1) + 1/(n1 - L + 1) (the Bernstein-type bound of river's
  and scikit-multiflow's implementations),

      eps_cut = sqrt(2 sigma^2 ln(2 / delta') / m) + 2 ln(2 / delta') / (3 m)

  the older part is dropped and a change is signalled (river 0.26 then
  starts over with an empty window, judging again after grace_period
  points). Buckets of
  exponentially growing size (ADWIN2) keep it O(log |W|) in memory and time.
  `clock` = how many points between checks (river's default 32; here 1, as
  a window metric arrives once a minute, not thousands a second).

River: Montiel, J. et al. (2021), "River: machine learning for streaming
data in Python", JMLR 22(110):1-8; https://riverml.xyz/0.26.1/api/drift/PageHinkley/
and https://riverml.xyz/0.26.1/api/drift/ADWIN/.

Scale. Both detectors are tuned in absolute units (Page-Hinkley's delta and
threshold; ADWIN's additive term assumes values in [0, 1]), and a CTR moves by
thousandths while a p99 latency moves by hundreds of milliseconds. So every
series is standardised before it reaches a detector:

    z_t = clip((x_t - c) / s, -clip_z, +clip_z)

s is a robust noise scale, s = median |x_t - x_{t-1}| / (sqrt(2) Phi^-1(3/4))
over the points kept (the median absolute successive difference: consistent
for Gaussian noise, and one level shift among them barely moves it), falling
back to the population standard deviation when that is 0. It is estimated
when the series has `warmup` points and refined at 2, 4, ... times that and
then every `history` points; while it is 0 (e.g. an error rate that is always
0) the warm-up goes on and nothing is judged. c is the warm-up median, re-set per
method to the new level after each change that method reports, so the clip
(a guard against one extreme window looking like a change) stays centred.
When the warm-up ends the detectors are fed its points, so detection can
start as soon as min_instances (resp. grace_period) allows.

Output. For a watched observation with n >= min_samples, each method emits
nothing while quiet, and

    Observation(kind="change", entity=<same>, metric=f"{metric}_change_{method}",
                value=1.0, n=<points of the series so far>, ts/window of the input)

when its detector reports a change at that point, then one with value=0.0 at
the series' next judged point (unless that one is a change again), so a rule
`value >= 0.5` fires and resolves. Details (both carry the same keys, for
message templates): method, source_kind, source_metric, level_before (mean of
the last `level_k` values before the estimated change point), level_after
(mean of the values from it on), direction ("up" | "down"), change_ts (the
ts of the first point at the new level), points_since_change,
latest (the metric's value in this observation). The change point is the
split of the points since the method's previous change (at most `history`)
maximising the two-sample statistic |mean_a - mean_b| * sqrt(n_a n_b / n).

Residuals and a false-alarm budget. A raw window CTR is no place for a change
detector with a stated false-alarm rate: it has a daily cycle, and its noise
grows and shrinks with the traffic's own cycle, so a detector that assumes
independent points around one level reports the day as a change (DETECTION.md
measured 73 (Page-Hinkley) and 243 (ADWIN) false alerts per 1,000 campaign-days
on the raw CTR). An observation that carries its own expected value is judged on
its residual instead; for the CTR judge's `ctr` observations
(`details["baseline_ctr"]`, the entity's cleared baseline p0, which an incident
cannot leak into: operators/ctr_evidence.py) that is the binomial Pearson
residual of the window (k clicks of n impressions),

    r_t = (k / n - p0) / sqrt(p0 (1 - p0) / n)

which is ~N(0, 1) on quiet traffic whatever the campaign's size or hour (the
baseline follows the cycle; the division removes the traffic's). A series is
judged on residuals from its first observation with an expected value on (the
raw points before it are dropped) and skips observations without one. Its
scale s is floored at 1 (extra-binomial noise can only widen a binomial
residual; a scale estimated low by chance from `warmup` points would otherwise
lower every threshold), and its thresholds come from the budget B =
`false_alarms_per_1000_entity_days` with P = `points_per_day`:

- Page-Hinkley is a CUSUM with reference k = delta on the standardised
  residual; with both sides watched each gets B / 2, i.e. an in-control
  average run length ARL0 = 2 * 1000 * P / B points (one side watched:
  1000 * P / B), and the threshold h solves Siegmund's approximation for a
  CUSUM on independent N(0, 1) points (Siegmund, D. (1985), *Sequential
  Analysis*, Springer, ch. II, eq. 2.56),

      ARL0 = (exp(2 k b) - 2 k b - 1) / (2 k^2),   b = h + 1.166

  (`page_hinkley_threshold`; k = 0.75 and B = 1: h = 8.83 per side of two).
- ADWIN: each of the day's P checks may err with probability B / (1000 P). A
  check tests every cut point of the window, each at delta' = delta / ln |W|
  (river's eps_cut), and a cut test on N(0, 1) points errs with probability
  <= delta'; by the union bound of Bifet & Gavalda (2007, Theorem 3.1) a check
  errs with probability <= C(W) delta / ln W, C(W) the cut points tested. The
  exponential histogram holds at most M buckets of each size 2^i <= W, so
  C(W) <= M (log2 W + 1) - 1, about 7 ln W, not the ln W river divides by
  (`adwin_cuts_per_log_width`: C(W) / ln W <= M / ln 2 + (M - 1) / ln(grace + 1)
  = 8.88 for M = 5, grace 10), and delta = B / (1000 P) / 8.88 (`adwin_delta`:
  7.8e-8; before this correction 6.9e-7, the per-check rate taken for delta).
  The bound is loose on white noise (a Monte Carlo at far larger budgets sees
  ~1e-3 of it: consecutive checks share their data), and it is not what broke
  the budget: on the benchmark ADWIN's 3 false cuts were real shifts of 0.6-1.0
  sd in the residual's mean lasting hours (a 4-h trailing baseline lagging the
  daily cycle), which long sub-windows resolve. So a cut is reported only if it
  also passes a test of a minimum effect k = `AdwinParams.min_effect` (0.25 sd)
  on the segment since the method's last change (at most `history` points):
  some split with both sides >= min_window_length points must have

      mean(W0) - mean(W1) > k s + s sqrt(2 ln(2 / delta') (1/n0 + 1/n1))

  (`effect_exceeds`, W1 below W0 for "down"), delta' = B / (1000 P) / S over its S
  splits (Bonferroni). That is the test of the shifted null |mu0 - mu1| <= k s at
  B / (1000 P) per check, so the budget holds for any wander of the residual's
  mean up to k, whatever ADWIN's own test does; the segment's bounded length keeps
  a slower, larger wander from accumulating the evidence ADWIN's unbounded
  window does. A vetoed cut leaves ADWIN the window it shrank to (W1, as in the
  paper; river would start from empty) and the segment as it was.

On a residual series only a move *away* from the expected value is reported
(|mean residual after the change point| > |before|): a return towards it (an
incident ending while the baseline held, the CTR judge's baseline catching up)
re-centres the detector silently, as it is the end of an episode, not a new
one. And only in `residual_direction` ("down" by default: a CTR below its
baseline, what the CTR rules page for; Page-Hinkley then runs one-sided, with
the whole budget on that side: ARL0 = 1000 * P / B, h = 8.37).

Both are derived for independent points; the residuals against a trailing
baseline are nearly so, and DETECTION.md measures the real rate on the
benchmark's campaigns (daily cycles, extra-binomial noise). Series without an
expected value (error rate, latency, PSI, accuracy, MAE) keep the configured
`page_hinkley` / `adwin` parameters and their rules stay `info`.

Everything depends only on the observations' order and values, so the output
is deterministic. A series silent for `expire_ms` of event time is forgotten.

State (`operators.state`, format 2): `ChangeState`, per (kind, metric, entity) series
its points (ts, judged value, the metric's own value), scale and, per method, the
detector's state as named fields (`PageHinkleyState`: river's running mean and CUSUM
sums; `AdwinState`: river's own serialisation of its exponential histogram, which
lives in river's Rust extension and has no other way out), its centre, floor and the
change awaiting its 0.0. The detectors' parameters are not state: they come from the
configuration at restore. Format 1 (unversioned positional rows with pickled river
detectors) is upgraded; only restore checkpoints this deployment wrote (a format-1
one contains pickles).

>>> round(page_hinkley_threshold(0.75, 2 * 1000 * 1440 / 1.0), 2)
8.83
>>> f"{adwin_delta(1.0, 1440):.3g}"
'7.82e-08'
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import msgspec
import numpy as np

from operators.base import Observation
from operators.rules import rule_spec as _rule
from operators.state import StateCodec

METHODS = ("page_hinkley", "adwin")
DEFAULT_WATCH: tuple[tuple[str, str], ...] = (
    ("ctr", "ctr"),
    ("service", "error_rate"),
    ("service", "latency_p99"),
    ("drift", "psi"),
    ("quality", "accuracy"),
    ("quality", "mae"),
)
# median |N(0, 2)| = sqrt(2) * Phi^-1(0.75)
_MAD_DIFF = math.sqrt(2.0) * NormalDist().inv_cdf(0.75)


@dataclass(frozen=True)
class PageHinkleyParams:
    """river.drift.PageHinkley's parameters, in standardised (noise = 1) units."""

    min_instances: int = 30
    delta: float = 0.75  # half of a 1.5-sigma shift
    threshold: float = 12.0
    alpha: float = 1 - 1e-4


@dataclass(frozen=True)
class AdwinParams:
    """river.drift.ADWIN's parameters, and the smallest change reported on a residual
    series (`min_effect`, in units of the residual's standard deviation)."""

    delta: float = 0.002
    clock: int = 1
    min_window_length: int = 5
    grace_period: int = 10
    max_buckets: int = 5
    # a cut on a residual series is reported only if the means either side of some split
    # of the recent segment differ by more than this many noise sds beyond their noise
    # bound (`effect_exceeds`; the module docstring: the slow wander a trailing baseline
    # leaves in the residual); None: no such test
    min_effect: float | None = 0.25


@dataclass(frozen=True)
class ChangeConfig:
    watch: tuple[tuple[str, str], ...] = DEFAULT_WATCH  # (kind, metric) pairs
    methods: tuple[str, ...] = METHODS
    page_hinkley: PageHinkleyParams = field(default_factory=PageHinkleyParams)
    adwin: AdwinParams = field(default_factory=AdwinParams)
    min_samples: int = 100  # observations with a smaller n are skipped
    # overrides of min_samples per "kind.metric", e.g. {"drift.psi": 500}
    min_samples_by: dict[str, int] = field(default_factory=dict)
    warmup: int = 30  # points that estimate the noise scale
    clip_z: float = 5.0
    # false alerts per 1,000 entity-days of each method on a residual series (see the
    # module docstring); None: residual series use the page_hinkley / adwin parameters
    false_alarms_per_1000_entity_days: float | None = 1.0
    points_per_day: float = 1440.0  # one point per one-minute window
    # which moves away from the expected value a residual series reports: "down" (a
    # CTR below its baseline, what the CTR rules page for), "up" or "both"
    residual_direction: str = "down"
    level_k: int = 10  # level_before averages at most this many points
    history: int = 120  # points kept per series for levels and the change point
    expire_ms: int = 7 * 86_400_000  # forget a series silent this long (event time)

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise ValueError(f"change methods must be among {METHODS}, got {self.methods}")
        if self.warmup < 2 or self.history < self.warmup or self.level_k < 1:
            raise ValueError("need warmup >= 2, history >= warmup and level_k >= 1")
        if self.residual_direction not in ("down", "up", "both"):
            raise ValueError("residual_direction must be 'down', 'up' or 'both'")
        budget = self.false_alarms_per_1000_entity_days
        if (budget is not None and not budget > 0) or not self.points_per_day > 0:
            raise ValueError("the false-alarm budget and points_per_day must be > 0")


class _Method:
    """One detector of a series and what it last reported."""

    __slots__ = ("center", "detector", "floor", "last")

    def __init__(self, detector: Any, center: float, floor: int) -> None:
        self.detector = detector
        self.center = center  # level the inputs are centred on (for the clip)
        self.floor = floor  # index of the first point after this method's last change
        self.last: dict[str, Any] | None = None  # details of a change awaiting its 0.0


class _Series:
    __slots__ = ("count", "history", "last_ts", "methods", "raw", "residual", "scale")

    def __init__(self, history: int, residual: bool = False) -> None:
        self.residual = residual  # judged on residuals against an expected value
        self.count = 0  # points seen
        self.history: deque[tuple[int, float]] = deque(maxlen=history)  # (ts, value)
        # the metric's own values of those points (the same as history's unless residual)
        self.raw: deque[float] = deque(maxlen=history)
        self.last_ts = 0
        self.scale: float | None = None  # None while warming up
        self.methods: dict[str, _Method] = {}


class PageHinkleyState(msgspec.Struct, tag="page_hinkley"):
    """river.drift.PageHinkley's state since its last reset (0.26: the running mean
    `_x_mean` and the sums U_t, L_t with their extremes m_t, M_t)."""

    n: float = 0.0  # points since the last reset
    mean: float = 0.0  # their mean, x_bar_t
    sum_increase: float = 0.0  # U_t
    sum_decrease: float = 0.0  # L_t
    min_increase: float = math.inf  # m_t
    max_decrease: float = -1.0  # M_t (river starts it at -1)
    drift_detected: bool = False  # reported at the last point (reset at the next)


class AdwinState(msgspec.Struct, tag="adwin"):
    """river.drift.ADWIN's state: its window W, an exponential histogram kept by
    river's Rust extension, as that extension serialises it (`__getstate__`: it has
    no other accessor), and whether it reported a change at the last point."""

    window: bytes = b""
    drift_detected: bool = False


class MethodState(msgspec.Struct):
    """One method of a series (`_Method`)."""

    detector: PageHinkleyState | AdwinState
    center: float
    floor: int
    last: dict[str, Any] | None = None


class SeriesState(msgspec.Struct):
    """One series (`_Series`): its last `history` points as (ts, value judged, the
    metric's own value)."""

    count: int
    last_ts: int
    scale: float | None
    history: list[tuple[int, float, float]]
    methods: dict[str, MethodState]
    residual: bool = False


class ChangeState(msgspec.Struct):
    """Change detection's checkpointed state."""

    series: dict[tuple[str, str, str], SeriesState] = {}
    max_ts: int = 0
    swept_at: int = 0


def _river_drift() -> Any:
    """river's `drift` module, imported at the first detector (not with this module:
    `river.drift` pulls in river's datasets and scikit-learn, about 0.8 s of CPU,
    which the CLI and any process that reads the configuration would pay)."""
    from river import drift

    return drift


def _detector_state(detector: Any) -> PageHinkleyState | AdwinState:
    if isinstance(detector, _river_drift().ADWIN):
        return AdwinState(detector._helper.__getstate__(), bool(detector._drift_detected))
    return PageHinkleyState(
        float(detector._x_mean.n),
        float(detector._x_mean._mean),
        float(detector._sum_increase),
        float(detector._sum_decrease),
        float(detector._min_increase),
        float(detector._max_decrease),
        bool(detector._drift_detected),
    )


def _load_detector(detector: Any, state: PageHinkleyState | AdwinState) -> None:
    """Put a detector built from the configuration into a checkpointed state."""
    if isinstance(state, AdwinState):
        detector._helper.__setstate__(state.window)
    else:
        detector._x_mean.n, detector._x_mean._mean = state.n, state.mean
        detector._sum_increase, detector._sum_decrease = state.sum_increase, state.sum_decrease
        detector._min_increase, detector._max_decrease = state.min_increase, state.max_decrease
    detector._drift_detected = state.drift_detected


def _from_format_1(plain: dict[str, Any]) -> dict[str, Any]:
    """Format 1: {"series": [[kind, metric, entity, count, last_ts, scale, history,
    {method: [pickled river detector, center, floor, last]}, residual], ...], "max_ts",
    "swept_at"}; history points [ts, value, raw] (before residuals [ts, value], no
    residual flag: the raw value is the value). An empty dict is a fresh state."""
    series: dict[tuple[str, str, str], Any] = {}
    for kind, metric, entity, count, last_ts, scale, history, methods, *rest in plain.get(
        "series", []
    ):
        series[(kind, metric, entity)] = {
            "count": count,
            "last_ts": last_ts,
            "scale": scale,
            "history": [
                [int(p[0]), float(p[1]), float(p[2] if len(p) > 2 else p[1])] for p in history
            ],
            "methods": {
                name: {
                    # our own checkpoint (format 1 pickled the detectors)
                    "detector": msgspec.to_builtins(_detector_state(pickle.loads(blob))),
                    "center": center,
                    "floor": floor,
                    "last": last,
                }
                for name, (blob, center, floor, last) in methods.items()
            },
            "residual": bool(rest and rest[0]),
        }
    return {
        "series": series,
        "max_ts": plain.get("max_ts", 0),
        "swept_at": plain.get("swept_at", 0),
    }


CODEC = StateCodec("change detection", ChangeState, format=2, upgrades={1: _from_format_1})


def robust_scale(values: Iterable[float]) -> float:
    """median |successive difference| / (sqrt(2) Phi^-1(3/4)), else the std, else 0."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size < 2:
        return 0.0
    s = float(np.median(np.abs(np.diff(a)))) / _MAD_DIFF
    if not s > 1e-12 * max(1.0, float(np.max(np.abs(a)))):
        s = float(np.std(a))
        if not s > 1e-12 * max(1.0, float(np.max(np.abs(a)))):
            return 0.0
    return s


def page_hinkley_threshold(delta: float, arl0: float) -> float:
    """The threshold h of a one-sided CUSUM with reference `delta` on independent
    N(0, 1) points whose in-control average run length is `arl0` points, by
    Siegmund's approximation ARL0 = (exp(2 k b) - 2 k b - 1) / (2 k^2), b = h + 1.166
    (Siegmund 1985, ch. II), solved for h by bisection.

    >>> round(page_hinkley_threshold(0.5, 1000.0), 3)
    5.063
    """
    if not delta > 0 or not arl0 > 1:
        raise ValueError("need delta > 0 and arl0 > 1")

    def arl(h: float) -> float:
        a = 2.0 * delta * (h + 1.166)
        return (math.expm1(a) - a) / (2.0 * delta * delta)

    lo, hi = 0.0, 1.0
    while arl(hi) < arl0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if arl(mid) < arl0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def adwin_cuts_per_log_width(max_buckets: int = 5, grace_period: int = 10) -> float:
    """An upper bound on C(W) / ln W, C(W) the number of cut points river's ADWIN tests
    in one check of a window of W > grace_period points (M = max_buckets).

    The window is an exponential histogram: at most M buckets of each size 2^i
    (an (M+1)-th merges two into the next size), and a bucket of size 2^i needs
    2^i <= W, so there are at most M (log2 W + 1) buckets and C(W) <= M (log2 W + 1) - 1
    cut points between them. Hence C(W) / ln W <= M / ln 2 + (M - 1) / ln W, largest at
    the smallest W judged, W = grace_period + 1.

    >>> round(adwin_cuts_per_log_width(5, 10), 3)
    8.882
    """
    if max_buckets < 1 or grace_period < 2:
        raise ValueError("need max_buckets >= 1 and grace_period >= 2")
    return max_buckets / math.log(2.0) + (max_buckets - 1) / math.log(grace_period + 1.0)


def adwin_delta(
    budget: float, points_per_day: float, max_buckets: int = 5, grace_period: int = 10
) -> float:
    """river's ADWIN `delta` for at most `budget` false cuts per 1,000 entity-days at
    `points_per_day` checks a day (one check per point: clock = 1).

    The day's P checks get delta_check = B / (1000 P) each (union bound over the
    day). One check tests every cut point of the window, each at delta' = delta / ln W
    (river's eps_cut uses ln(2 ln W / delta)), a false cut having probability <= delta'
    for N(0, 1) points (the Gaussian tail P(|Z| > sqrt(2 ln(2/delta'))) <= delta', and
    1/m >= 1/n0 + 1/n1); by the union bound of Bifet & Gavalda (2007, Theorem 3.1)
    over its C(W) cut points a check errs with probability <= C(W) delta / ln W. So
    delta = delta_check / sup_W C(W) / ln W (`adwin_cuts_per_log_width`: 8.88 for
    river's M = 5 buckets and a grace period of 10).

    >>> f"{adwin_delta(1.0, 1440):.3g}"
    '7.82e-08'
    """
    per_check = budget / (1000.0 * points_per_day)
    return per_check / adwin_cuts_per_log_width(max_buckets, grace_period)


def expected_value(obs: Observation) -> tuple[float, float] | None:
    """(expected value, its standard deviation) an observation carries, if any: for
    the CTR judge's `ctr` observation, the baseline p0 and sqrt(p0 (1 - p0) / n).

    >>> o = Observation("ctr", "c", "ctr", 0.01, 0, 400, details={"baseline_ctr": 0.02})
    >>> mean, sd = expected_value(o); round(mean, 3), round(sd, 5)
    (0.02, 0.007)
    """
    details = obs.details
    if not details:
        return None
    p0 = details.get("baseline_ctr")
    if p0 is None or not 0.0 < p0 < 1.0 or obs.n <= 0:
        return None
    return float(p0), math.sqrt(p0 * (1.0 - p0) / obs.n)


def change_point(values: np.ndarray) -> int:
    """The split 1 <= t < n maximising |mean(v[:t]) - mean(v[t:])| * sqrt(t (n - t) / n)."""
    n = values.size
    if n < 2:
        return 0
    csum = np.cumsum(values)
    t = np.arange(1, n)
    left = csum[:-1] / t
    right = (csum[-1] - csum[:-1]) / (n - t)
    stat = np.abs(left - right) * np.sqrt(t * (n - t) / n)
    return int(np.argmax(stat)) + 1  # first maximum: deterministic


def effect_exceeds(
    values: np.ndarray,
    effect: float,
    scale: float,
    delta: float,
    min_len: int = 5,
    side: str = "both",
) -> bool:
    """Whether some split of `values` into W0 . W1 (both >= `min_len` points) has
    means differing by more than `effect` beyond their noise bound: the test of the
    shifted null H0: |mu0 - mu1| <= effect,

        |mean(W0) - mean(W1)| > effect + scale * sqrt(2 ln(2 / delta') (1/n0 + 1/n1)),

    delta' = delta / S, S = n - 2 min_len + 1 the splits tested (Bonferroni). If the
    means differ by at most `effect`, a split passes only if its estimate errs by more
    than the bound, probability <= delta' for N(mu, scale^2) points (the Gaussian tail
    P(|Z| > sqrt(2 ln(2/delta'))) <= delta', as in `adwin_delta`), so the whole test
    errs with probability <= delta: with delta = B / (1000 P) per check, the budget
    holds for any wander of the mean up to `effect`. `side` "down" / "up" counts only
    mean(W1) below / above mean(W0).

    >>> v = np.r_[np.zeros(60), np.full(30, -3.0)]
    >>> effect_exceeds(v, 1.0, 1.0, 1e-7), effect_exceeds(v, 2.0, 1.0, 1e-7)
    (True, False)
    """
    n = values.size
    if n < 2 * min_len:
        return False
    csum = np.cumsum(values)
    t = np.arange(min_len, n - min_len + 1)
    left = csum[t - 1] / t
    right = (csum[-1] - csum[t - 1]) / (n - t)
    gap = left - right  # > 0: W1 below W0
    if side == "down":
        pass
    elif side == "up":
        gap = -gap
    else:
        gap = np.abs(gap)
    log_term = math.log(2.0 * t.size / delta)
    bound = scale * np.sqrt(2.0 * log_term * (1.0 / t + 1.0 / (n - t)))
    return bool(np.any(gap > effect + bound))


# Change detection (Page-Hinkley, ADWIN) is `info`: a level moved, worth a look on the
# dashboard, not a page (deploy/alertmanager routes info to no one). Its thresholds
# assume independent, stationary points; a campaign's CTR has a daily cycle, so its
# false alerts are far above FALSE_ALARM_BUDGET (DETECTION.md measures them:
# docs/monitors/change.md). The paged verdicts are the budgeted rules.
CHANGE_THRESHOLDS: dict[str, float] = {"info": 0.5}
# ... except both methods on the CTR: they judge the window's residual against the CTR
# judge's baseline with thresholds from the budget (ADWIN's with its cut points counted
# and a minimum effect), drops only, and each measured 0 false alerts per 1,000
# campaign-days on the benchmark (DETECTION.md)
CALIBRATED_CHANGE_RULES = frozenset({"ctr_change_page_hinkley", "ctr_change_adwin"})
CALIBRATED_CHANGE_THRESHOLDS: dict[str, float] = {"warning": 0.5}


def change_rules(watch: Iterable[tuple[str, str]] = DEFAULT_WATCH) -> list[dict[str, Any]]:
    """The default rules of change detection, one per watched (kind, metric) and method:
    `{metric}_change_{method}` fires on a change observation (value 1.0) and resolves on
    the next judged point (0.0), at `info` (CHANGE_THRESHOLDS), or `warning` for the
    calibrated ones (CALIBRATED_CHANGE_RULES).

    >>> [rule["name"] for rule in change_rules([("ctr", "ctr")])]
    ['ctr_change_page_hinkley', 'ctr_change_adwin']
    """
    return [
        _rule(
            f"{metric}_change_{method}",
            "change",
            f"{metric}_change_{method}",
            ">=",
            dict(
                CALIBRATED_CHANGE_THRESHOLDS
                if f"{metric}_change_{method}" in CALIBRATED_CHANGE_RULES
                else CHANGE_THRESHOLDS
            ),
            f"{{entity}}: the level of {metric} changed ({method.replace('_', '-')})",
            resolved_message=f"{{entity}}: the level of {metric} is steady again at "
            f"{{latest:.4g}} ({method.replace('_', '-')})",
            cooldown_s=3600,
        )
        for _, metric in watch
        for method in METHODS
    ]


class ChangeDetectors:
    """Page-Hinkley and ADWIN per (kind, metric, entity) over window observations."""

    def __init__(self, config: ChangeConfig | None = None) -> None:
        self.config = config or ChangeConfig()
        self.watch = frozenset((kind, metric) for kind, metric in self.config.watch)
        self.series: dict[tuple[str, str, str], _Series] = {}
        self.max_ts = 0
        self.swept_at = 0

    # -- detectors -----------------------------------------------------------

    def _budget_per_check(self) -> float:
        """The false-alarm probability each point's check may spend: B / (1000 P)."""
        budget = self.config.false_alarms_per_1000_entity_days
        assert budget is not None
        return budget / (1000.0 * self.config.points_per_day)

    def _new_detector(self, method: str, residual: bool = False) -> Any:
        """A river detector; on a residual series with a budget, thresholds from it."""
        budget = self.config.false_alarms_per_1000_entity_days
        calibrated = residual and budget is not None
        per_day = self.config.points_per_day
        if method == "page_hinkley":
            p = self.config.page_hinkley
            threshold = p.threshold
            mode = self.config.residual_direction if residual else "both"
            if calibrated:
                assert budget is not None
                sides = 2.0 if mode == "both" else 1.0  # the budget is split over them
                threshold = page_hinkley_threshold(p.delta, sides * 1000.0 * per_day / budget)
            return _river_drift().PageHinkley(
                min_instances=p.min_instances,
                delta=p.delta,
                threshold=threshold,
                alpha=p.alpha,
                mode=mode,
            )
        a = self.config.adwin
        delta = a.delta
        if calibrated and budget is not None:
            delta = adwin_delta(budget, per_day, a.max_buckets, a.grace_period)
        return _river_drift().ADWIN(
            delta=delta,
            clock=a.clock,
            max_buckets=a.max_buckets,
            min_window_length=a.min_window_length,
            grace_period=a.grace_period,
        )

    # -- input ---------------------------------------------------------------

    def observe(self, observations: Iterable[Observation]) -> list[Observation]:
        """Feed the watched observations; return the change observations they raise."""
        cfg = self.config
        out: list[Observation] = []
        for obs in observations:
            pair = (obs.kind, obs.metric)
            if pair not in self.watch:
                continue
            if obs.n < cfg.min_samples_by.get(f"{obs.kind}.{obs.metric}", cfg.min_samples):
                continue
            x = float(obs.value)
            if not math.isfinite(x):
                continue
            key = (obs.kind, obs.metric, obs.entity)
            series = self.series.get(key)
            expected = expected_value(obs)
            if expected is not None:
                if series is None or not series.residual:
                    # judged on residuals from here on; raw points before are dropped
                    series = self.series[key] = _Series(cfg.history, residual=True)
                mean, sd = expected
                x = (x - mean) / sd
            elif series is None:
                series = self.series[key] = _Series(cfg.history)
            elif series.residual:
                continue  # no expected value to judge this point against
            self._point(series, obs, x, out, float(obs.value))
            if obs.ts > self.max_ts:
                self.max_ts = obs.ts
        if self.max_ts - self.swept_at >= cfg.expire_ms // 4:
            self._expire()
        return out

    def _point(
        self, series: _Series, obs: Observation, x: float, out: list[Observation], raw: float
    ) -> None:
        cfg = self.config
        series.history.append((obs.ts, x))
        series.raw.append(raw)
        series.count += 1
        series.last_ts = max(series.last_ts, obs.ts)
        if series.scale is None:
            if series.count < cfg.warmup:
                return
            scale = robust_scale(v for _, v in series.history)
            if scale <= 0 and not series.residual:
                return  # no spread yet: keep warming up
            series.scale = max(scale, 1.0) if series.residual else scale
            center = float(np.median([v for _, v in series.history]))
            first = series.count - len(series.history)
            for method in cfg.methods:
                detector = self._new_detector(method, series.residual)
                state = series.methods[method] = _Method(detector, center, first)
                # replay the warm-up; only the current point may be reported
                for i, (_, v) in enumerate(list(series.history)[:-1]):
                    self._step(series, state, v, first + i)
        elif self._rescale_due(series.count):
            scale = robust_scale(v for _, v in series.history)
            if series.residual:
                series.scale = max(scale, 1.0)
            elif scale > 0:
                series.scale = scale
        index = series.count - 1
        for method in cfg.methods:
            state = series.methods.get(method)
            if state is None:  # a method added to the config since the snapshot
                center = float(np.median([v for _, v in series.history]))
                detector = self._new_detector(method, series.residual)
                state = series.methods[method] = _Method(detector, center, index)
            details = self._step(series, state, x, index)
            if details is not None:
                details["latest"] = raw
                out.append(self._emit(obs, series, method, 1.0, details))
                state.last = details
            elif state.last is not None:
                out.append(self._emit(obs, series, method, 0.0, {**state.last, "latest": raw}))
                state.last = None

    def _rescale_due(self, count: int) -> bool:
        """Refine the scale at warmup * 2^k points (k >= 1), then every `history` points."""
        warmup, history = self.config.warmup, self.config.history
        if count % history == 0:
            return True
        k = count // warmup
        return count < history and count % warmup == 0 and k & (k - 1) == 0

    def _step(self, series: _Series, state: _Method, x: float, index: int) -> dict[str, Any] | None:
        """Update one detector with point `index`; the change's details if it reports one."""
        clip = self.config.clip_z
        assert series.scale is not None
        z = min(max((x - state.center) / series.scale, -clip), clip)
        state.detector.update(z)
        if not state.detector.drift_detected:
            return None
        # the segment since this method's last change, as far as the history reaches
        first = series.count - len(series.history)
        hist = list(series.history)[: index - first + 1]
        start = max(state.floor, first) - first
        segment = hist[start:] if len(hist) - start >= 2 else hist
        offset = index + 1 - len(segment)  # index of segment[0]
        values = np.fromiter((v for _, v in segment), dtype=np.float64, count=len(segment))
        split = change_point(values)
        before = values[max(0, split - self.config.level_k) : split]
        after = values[split:]
        level_before = float(before.mean()) if before.size else float(values[0])
        level_after = float(after.mean())
        kept = state.center, state.floor
        state.center = float(np.median(after))
        state.floor = offset + split
        if series.residual:
            # back towards the expected value (an incident ending, the baseline
            # catching up) is a return, not a change; and only the watched direction
            # is reported; the detector goes on from here
            side = self.config.residual_direction
            wrong = (level_after > level_before and side == "down") or (
                level_after < level_before and side == "up"
            )
            if wrong or abs(level_after) < abs(level_before):
                return None
            a = self.config.adwin
            if (
                isinstance(state.detector, _river_drift().ADWIN)
                and self.config.false_alarms_per_1000_entity_days is not None
                and a.min_effect is not None
                and not effect_exceeds(
                    values,
                    a.min_effect * series.scale,
                    series.scale,
                    self._budget_per_check(),
                    a.min_window_length,
                    side,
                )
            ):
                # a cut on the residual's slow wander, not a change: vetoed. ADWIN keeps
                # the window it shrank to (W1, as in Bifet & Gavalda's ADWIN) instead
                # of river's restart from empty at the next update, and the segment and
                # centre stay, so an incident right after still has its context
                state.detector._drift_detected = False  # river 0.26: no reset then
                state.center, state.floor = kept
                return None
        info: dict[str, Any] = {}
        if series.residual:
            # the levels in the metric's own units; the residuals' means beside them
            info = {"residual_before": level_before, "residual_after": level_after}
            raw = np.fromiter(series.raw, dtype=np.float64, count=len(series.raw))
            raw = raw[: len(hist)]
            raw = raw[start:] if len(hist) - start >= 2 else raw
            raw_before = raw[max(0, split - self.config.level_k) : split]
            down = level_after < level_before
            level_before = float(raw_before.mean()) if raw_before.size else float(raw[0])
            level_after = float(raw[split:].mean())
        else:
            down = level_after < level_before
        return {
            **info,
            "level_before": level_before,
            "level_after": level_after,
            "direction": "down" if down else "up",
            "change_ts": segment[split][0],
            "points_since_change": int(after.size),
            "latest": x,
        }

    def _emit(
        self, obs: Observation, series: _Series, method: str, value: float, info: dict[str, Any]
    ) -> Observation:
        details = {"method": method, "source_kind": obs.kind, "source_metric": obs.metric, **info}
        return Observation(
            kind="change",
            entity=obs.entity,
            metric=f"{obs.metric}_change_{method}",
            value=value,
            ts=obs.ts,
            n=series.count,
            window_start=obs.window_start,
            window_end=obs.window_end,
            details=details,
        )

    def _expire(self) -> None:
        horizon = self.max_ts - self.config.expire_ms
        for key in [k for k, s in self.series.items() if s.last_ts < horizon]:
            del self.series[key]
        self.swept_at = self.max_ts

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        series = {
            key: SeriesState(
                count=s.count,
                last_ts=s.last_ts,
                scale=s.scale,
                history=[(ts, v, r) for (ts, v), r in zip(s.history, s.raw, strict=True)],
                methods={
                    name: MethodState(_detector_state(m.detector), m.center, m.floor, m.last)
                    for name, m in s.methods.items()
                },
                residual=s.residual,
            )
            for key, s in self.series.items()
        }
        return CODEC.dump(ChangeState(series, self.max_ts, self.swept_at))

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state with a snapshot's (an empty dict gives a fresh state)."""
        state = CODEC.load(snapshot)
        self.series = {}
        for key, saved in state.series.items():
            s = _Series(self.config.history, residual=saved.residual)
            s.count, s.last_ts, s.scale = saved.count, saved.last_ts, saved.scale
            s.history.extend((ts, v) for ts, v, _ in saved.history)
            s.raw.extend(r for _, _, r in saved.history)
            for name, m in saved.methods.items():
                detector = self._new_detector(name, saved.residual)
                _load_detector(detector, m.detector)
                s.methods[name] = _Method(detector, m.center, m.floor)
                s.methods[name].last = m.last
            self.series[key] = s
        self.max_ts = state.max_ts
        self.swept_at = state.swept_at


__all__ = [
    "CALIBRATED_CHANGE_RULES",
    "CALIBRATED_CHANGE_THRESHOLDS",
    "CHANGE_THRESHOLDS",
    "DEFAULT_WATCH",
    "METHODS",
    "AdwinParams",
    "AdwinState",
    "ChangeConfig",
    "ChangeDetectors",
    "ChangeState",
    "PageHinkleyParams",
    "PageHinkleyState",
    "adwin_cuts_per_log_width",
    "adwin_delta",
    "change_point",
    "change_rules",
    "effect_exceeds",
    "expected_value",
    "page_hinkley_threshold",
    "robust_scale",
]
