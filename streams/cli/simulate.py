"""Synthetic traffic of all four input topics with switchable incidents, on event time.

The generator walks event time one second at a time and yields
`(topic, key, value)` messages sorted by `ts` within each second (so in time
order overall), then `("__tick__", "", horizon_ms)` once per second:

- impressions of many campaigns and users, each campaign with its own base
  CTR, A/B variants (50/50) for the experiment campaigns (experiment
  `exp-<campaign_id>`), and clicks that follow their impression after a
  random delay (a few duplicates and orphans, as real click trackers produce);
  each impression carries the `model_id` of the model serving its campaign
  (`Scenario.model_of`: campaign i, model i mod `models`);
- inference logs of `models` models (`model-0`, ...; version "1.0.0"): five
  numeric features (`FEATURES`: amount, account_age_days, session_length_s,
  items_in_cart, distance_km) and one categorical (`device`), a score in
  [0, 1] from a logistic model of the features, its confidence |2p - 1|,
  log-normal latency and a small error rate;
- sensor readings of `sensors` sensors (`sensor-00`, ...) at sites
  (`site-a`, ...): temperature (°C), vibration (mm/s) and pressure (bar),
  correlated through a shared slowly varying load (an AR(1) process) plus
  independent noise.

- labels (v2) of the inference logs: for the classifiers a 0/1 outcome drawn
  from the model's own (calibrated) probability, for the regressor
  (`model-reg`, `regressor_per_s` requests a second, a delivery time in
  minutes, no confidence) the true value around its prediction; each label
  comes after a log-normal delay (median `label_delay_median_s`, capped at
  `label_delay_max_s`) and `label_missing_rate` of them never come. Failed
  requests get no label.

Topic names are the logical ones ("impressions", "clicks", "inference-logs",
"sensor-readings", "labels"); `publish(topics=...)` maps them to configured names.

Every traffic kind draws from its own seeded random stream, and an incident
only transforms values after they are drawn: a run with incidents is
byte-identical to the quiet run outside the incidents' windows (except for
the clicks of impressions inside a `ctr_drop`). Incidents carry ground truth
(`Incident.start_s` .. `end_s`, seconds after the start, judged by each
event's own time); `factor` is the magnitude:

    kind              target                 factor (default_incidents)
    ctr_drop          cmp-002                CTR multiplied by factor (0.25)
    srm               exp-cmp-000            share of variant A = factor,
                                             B = 1 - factor (0.4: 40/60)
    feature_drift     model-0/distance_km    numeric feature + factor x its std
                                             (1.5); for `device`: that share
                                             of requests becomes the rarest
                                             device
    prediction_shift  model-1                factor added to the score's logit
                                             (1.5)
    latency_spike     model-0                latency multiplied by factor (3)
    error_spike       model-1                error probability = factor (0.2)
    sensor_spike      sensor-01[/metric]     the readings inside the window
                                             (1-3 s: 1-3 readings) of the
                                             metric (default vibration) +
                                             factor x its std (8)
    sensor_rise       sensor-02              temperature rises strictly and
                                             steadily by factor °C over the
                                             incident (10), then falls back
    sensor_regime     sensor-03              every metric moves by factor x its
                                             std (6): temperature and
                                             vibration up, pressure down,
                                             against their usual correlation
    concept_drift     model-0                the truth changes, the inputs and
                                             scores do not: a classifier's
                                             label is flipped for that share
                                             of requests (0.4); a regressor's
                                             true value is x (1 + factor)
    label_noise       model-0                that share of the labels is
                                             replaced by a coin flip (a
                                             regressor's by a random value)
    label_delay       model-0                label delays grow steadily to
                                             (1 + factor) x over the incident

Only `concept_drift` is in the default schedule (the quality monitor's
incident); `label_noise` and `label_delay` are switched on by hand.

Experiments (issue 16; off unless the scenario asks): `shared_experiment_campaigns`
campaigns after the experiment campaigns run one experiment together,
`exp-shared` (arms `control` / `treatment`, 50/50, sticky per user), so its traffic spans
campaigns in different partitions; `experiment_models` models serve their
requests from the two arms of `exp-model` (alternating), carrying
`experiment` and `variant` on their inference logs. Their incidents:

    arm_latency       exp-model/treatment    that arm's latency x factor (1.6)
    arm_error         exp-model/treatment    that arm's error probability =
                                             factor (0.08)
    ramp              exp-shared             the first arm's share = factor
                                             from the start on (0.85: a jump
                                             of 35 points)
    crossover         exp-shared             a share `factor` of impressions
                                             is shown again to the same user
                                             in the other arm (0.05)
    srm_dimension     exp-shared/ad-3        impressions of that ad only:
                                             the first arm's share = factor
                                             (0.8); the others stay 50/50
    arm_ctr_drop      exp-cmp-000/B          that arm's CTR x factor (0.3): the
                      or exp-shared/treatment  clicks of its impressions

Their decisions take no draw from the random streams (a hash of the
impression's sequence number), so the quiet traffic is unchanged by them.

Conversions (v2): the first click of an impression converts with its
campaign's CVR (about `cvr`, 10 %), after a log-normal delay (median
`conversion_delay_median_s`, 10 min, between 30 s and 55 min: inside the
3,600 s conversion window) with a log-normal order value (median
`order_value_median`, 40), on the `conversions` topic keyed by campaign. The
clicks and conversions of an experiment's impressions carry its `experiment`
(what re-keys them for the funnel guardrails, operators/funnel.py). They draw
from a stream of their own, so every other topic is unchanged by them. The
incident:

    cvr_drop          exp-shared/treatment   that arm's CVR x factor (0.5);
                      or exp-cmp-000/B       the conversions of impressions
                                             inside the incident

Every kind is declared once, in `INCIDENT_KINDS` (an `IncidentKind` each: what
its target names, the topic it changes, the generator's stage that applies it,
the check of its target and factor, and its effect); `KINDS`, `EXPERIMENT_KINDS`,
`ALL_KINDS` and the command line's `--incident` read it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from operators.ctr import CtrConfig
from operators.drift import DriftConfig

Message = tuple[str, str, bytes]  # topic, key, value

REGRESSOR = "model-reg"  # the simulated regressor's model_id
SHARED_EXPERIMENT = "exp-shared"
MODEL_EXPERIMENT = "exp-model"
ARMS = ("control", "treatment")
MODEL_VERSION = "1.0.0"
METRICS = ("temperature", "vibration", "pressure")
SPIKE_METRIC = "vibration"  # sensor_spike's metric when the target names none
REGIME_DIRECTION = {"temperature": 1.0, "vibration": 1.0, "pressure": -1.0}
# The CTR monitor's joins (CtrConfig, read rather than repeated): a click counts for its
# impression up to attribution_ms after it, a conversion for its click up to
# conversion_ms after it. The simulated delays stay inside them, with a margin.
CLICK_DELAY_MAX_MS = CtrConfig().attribution_ms - 10_000  # 590 s
CONVERSION_DELAY_MAX_S = CtrConfig().conversion_ms / 1000 - 300  # 55 min


@dataclass(frozen=True)
class Incident:
    kind: str  # one of ALL_KINDS (a name in INCIDENT_KINDS)
    target: str  # campaign, experiment, model, model/feature or sensor[/metric]
    start_s: float  # seconds after the simulation start
    duration_s: float
    factor: float = 0.3  # the magnitude; its meaning depends on the kind

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident kind {self.kind!r}; known: {', '.join(ALL_KINDS)}")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass
class Scenario:
    start_ms: int
    duration_s: int = 2400
    campaigns: int = 10
    users: int = 20_000
    impressions_per_s: float = 60.0
    experiment_campaigns: int = 2  # the first N campaigns run an A/B experiment
    click_delay_mean_s: float = 20.0
    duplicate_click_rate: float = 0.02
    orphan_click_rate: float = 0.002
    seed: int = 42
    incidents: list[Incident] = field(default_factory=list)
    inference_per_s: float = 20.0  # inference logs per second, over all models
    models: int = 2
    inference_error_rate: float = 0.005  # the quiet error probability
    sensors: int = 10
    sensor_readings_per_s: float = 1.0  # per sensor
    sites: int = 3  # sensors are spread over this many sites, round robin
    # v2 labels (ground truth of the inference logs) and a regressor model
    labels: bool = True
    label_delay_median_s: float = 45.0  # log-normal delays ...
    label_delay_sigma: float = 1.0  # ... of this log-scale spread
    label_delay_max_s: float = 540.0  # ... capped (within the demo's label delay)
    label_missing_rate: float = 0.1  # labels that never come
    regressor_per_s: float = 2.0  # requests a second to `model-reg` (0: none)
    # issue 16: campaigns after the experiment campaigns sharing `exp-shared`, and
    # models whose requests are served by the arms of `exp-model`
    shared_experiment_campaigns: int = 0
    experiment_models: int = 0
    # v2 conversions of clicks (cvr 0: none)
    # off by default (the v1 topics only); `streamwatch simulate --cvr` and the demo set it
    cvr: float = 0.0  # a campaign's CVR is cvr x uniform(0.6, 1.4)
    conversion_delay_median_s: float = 600.0
    conversion_delay_sigma: float = 1.0
    conversion_delay_min_s: float = 30.0  # within the conversion window: 30 s ..
    conversion_delay_max_s: float = CONVERSION_DELAY_MAX_S  # .. 55 min
    order_value_median: float = 40.0  # log-normal order values (revenue)
    order_value_sigma: float = 0.6

    def run_tag(self) -> str:
        """What the event ids of this run start with: the seed and the start second.
        Two simulations published to one broker (the README's walkthrough runs two
        with the same seed, a few seconds apart) must not share ids: the second run's
        clicks would join the first run's impressions, its labels the first's
        predictions, and mask both runs' incidents.

        >>> Scenario(start_ms=1_700_000_000_500, duration_s=60).run_tag()
        '42-1700000000'
        """
        return f"{self.seed}-{self.start_ms // 1000}"

    def campaign_ids(self) -> list[str]:
        return [f"cmp-{i:03d}" for i in range(self.campaigns)]

    def experiment_ids(self) -> list[str]:
        return [f"exp-{c}" for c in self.campaign_ids()[: self.experiment_campaigns]]

    def shared_campaigns(self) -> list[str]:
        first = self.experiment_campaigns
        return self.campaign_ids()[first : first + self.shared_experiment_campaigns]

    def model_ids(self) -> list[str]:
        return [f"model-{i}" for i in range(self.models)]

    def model_of(self, campaign_id: str) -> str | None:
        """The model that ranks a campaign's ads (its impressions carry its `model_id`):
        campaign i is served by model i mod `models`."""
        if not self.models:
            return None
        return f"model-{int(campaign_id.removeprefix('cmp-')) % self.models}"

    def regressor_ids(self) -> list[str]:
        return [REGRESSOR] if self.regressor_per_s > 0 else []

    def sensor_ids(self) -> list[str]:
        return [f"sensor-{i:02d}" for i in range(self.sensors)]

    def site_of(self, sensor_index: int) -> str:
        return f"site-{chr(ord('a') + sensor_index % max(1, self.sites))}"

    def ground_truth(self) -> list[Incident]:
        """The injected incidents, by start time: what should fire, on what, when."""
        return sorted(self.incidents, key=lambda i: (i.start_s, i.kind, i.target))


def _span(ids: list[str]) -> str:
    """`cmp-000..cmp-002` (or the one id, or `none`): the ids a scenario has."""
    if not ids:
        return "none"
    return ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"


def check_incidents(s: Scenario) -> None:
    """Refuse an incident whose target this scenario does not simulate, or whose
    factor makes no sense for its kind, with a one-line ValueError that names the
    valid targets (and the option that adds more), e.g. a `ctr_drop` on
    `cmp-003` when the scenario has three campaigns:

    >>> wrong = Incident("ctr_drop", "cmp-003", 0, 60)
    >>> try:
    ...     check_incidents(Scenario(0, campaigns=3, incidents=[wrong]))
    ... except ValueError as exc:
    ...     print(str(exc).split("must be ")[1])
    a campaign id: cmp-000..cmp-002 (--campaigns sets how many)
    """
    for inc in s.incidents:
        kind, target, f = inc.kind, inc.target, inc.factor
        ok, what = INCIDENT_KINDS[kind].verdict(s, inc)
        if not ok:
            raise ValueError(
                f"incident {kind} on {target!r} (factor {f:g}): the target must be {what}"
            )


def check_timing(s: Scenario) -> None:
    """Refuse an incident that would never be seen: starting before the run, after
    its end, or lasting no time (the command line's check; tests may place
    incidents past the end on purpose)."""
    for inc in s.incidents:
        if inc.start_s < 0 or inc.duration_s <= 0 or inc.start_s >= s.duration_s:
            raise ValueError(
                f"incident {inc.kind} on {inc.target!r}: start {inc.start_s:g} s and duration "
                f"{inc.duration_s:g} s must lie within the run of {s.duration_s} s "
                "(--duration sets its length)"
            )


# -- inference model ----------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    name: str
    dist: str  # lognormal (a=mu, b=sigma) | exponential (a=mean) | gamma (a=k, b=theta)
    #            | count (1 + floor of an exponential of mean a)
    a: float
    b: float
    weight: float  # in the score's logit, per standard deviation
    decimals: int

    @property
    def mean(self) -> float:
        if self.dist == "lognormal":
            return math.exp(self.a + self.b**2 / 2)
        if self.dist == "exponential":
            return self.a
        if self.dist == "gamma":
            return self.a * self.b
        q = math.exp(-1 / self.a)  # count: 1 + Geometric(p = 1 - q) failures
        return 1 + q / (1 - q)

    @property
    def std(self) -> float:
        if self.dist == "lognormal":
            return math.sqrt((math.exp(self.b**2) - 1) * math.exp(2 * self.a + self.b**2))
        if self.dist == "exponential":
            return self.a
        if self.dist == "gamma":
            return math.sqrt(self.a) * self.b
        q = math.exp(-1 / self.a)
        return math.sqrt(q) / (1 - q)

    def draw(self, rng: random.Random) -> float:
        if self.dist == "lognormal":
            return rng.lognormvariate(self.a, self.b)
        if self.dist == "exponential":
            return rng.expovariate(1 / self.a)
        if self.dist == "gamma":
            return rng.gammavariate(self.a, self.b)
        return float(1 + int(rng.expovariate(1 / self.a)))


FEATURES = (
    Feature("amount", "lognormal", 3.5, 0.8, 0.9, 2),
    Feature("account_age_days", "exponential", 400.0, 0.0, -0.6, 1),
    Feature("session_length_s", "lognormal", 4.0, 0.6, 0.4, 1),
    Feature("items_in_cart", "count", 2.5, 0.0, 0.3, 0),
    Feature("distance_km", "gamma", 2.0, 4.0, 0.05, 2),
)
CATEGORICAL = "device"
DEVICES = ("android", "ios", "web", "tv")  # the last is rare: categorical drift moves to it
DEVICE_WEIGHTS = (0.45, 0.35, 0.18, 0.02)
DEVICE_EFFECT = {"android": 0.0, "ios": 0.1, "web": -0.2, "tv": 0.3}
SCORE_NOISE = 0.6  # std of the logit's noise
LATENCY_SIGMA = 0.3  # of log latency


@dataclass(frozen=True)
class _Model:
    model_id: str
    intercept: float
    latency_median_ms: float
    device_cum: tuple[float, ...]


# -- sensors ------------------------------------------------------------------

# per metric: (base low, base high, load coefficient, noise std)
SENSOR_METRICS = {
    "temperature": (55.0, 75.0, 1.5, 0.4),
    "vibration": (2.0, 4.0, 0.3, 0.12),
    "pressure": (4.0, 6.0, 0.2, 0.06),
}
LOAD_TAU_S = 5.0  # time constant of the shared load (an AR(1) process), seconds


def metric_std(metric: str) -> float:
    """The standard deviation of a quiet sensor's metric (load and noise together)."""
    _, _, coef, noise = SENSOR_METRICS[metric]
    return math.hypot(coef, noise)


class _Sensor:
    __slots__ = ("base", "interval_ms", "load", "next_ts", "sensor_id", "site")

    def __init__(
        self, sensor_id: str, site: str, base: dict[str, float], first_ts: int, interval_ms: int
    ) -> None:
        self.sensor_id = sensor_id
        self.site = site
        self.base = base
        self.next_ts = first_ts
        self.interval_ms = interval_ms
        self.load = 0.0


# -- incident kinds ---------------------------------------------------------------
# Each kind is declared once, here: what its target names, which topic it changes,
# the stage of the generator that applies it, how its target and factor are checked
# and its effect. The generator asks a stage's incidents to act on the value being
# drawn (`_apply`) rather than switching on their names.


@dataclass(frozen=True)
class FactorRule:
    """The factors a kind accepts, and how the check's message says so."""

    ok: Callable[[float], bool]
    text: str  # "in [0, 1]", ...


ANY_FACTOR = FactorRule(lambda f: True, "")
NON_NEGATIVE = FactorRule(lambda f: f >= 0, ">= 0")
UNIT = FactorRule(lambda f: 0 <= f <= 1, "in [0, 1]")
OPEN_UNIT = FactorRule(lambda f: 0 < f < 1, "in (0, 1)")
BELOW_ONE = FactorRule(lambda f: 0 <= f < 1, "in [0, 1)")
DEGREES = FactorRule(lambda f: f > 0, "> 0 (degrees)")

# a check of an incident's target against a scenario: (whether it is one the scenario
# simulates, what the target must be); the kind's FactorRule adds the factor's part
TargetCheck = Callable[["Scenario", "Incident"], tuple[bool, str]]


@dataclass(frozen=True)
class IncidentKind:
    """One kind of incident, declared once in `INCIDENT_KINDS`: the check of its
    target and factor, and the effect the generator's stage `stage` lets it have.

    >>> k = INCIDENT_KINDS["cvr_drop"]
    >>> k.targets, k.topic, k.stage, k.experiment
    ('experiment/arm', 'conversions', 'conversions', True)
    >>> wrong = Incident("cvr_drop", "exp-cmp-000/B", 0, 60, 1.5)
    >>> ok, what = k.verdict(Scenario(0, cvr=0.1), wrong)
    >>> ok, what.split("; ")[1]
    (False, 'factor in [0, 1)')
    >>> r = _Rate("cmp-000", "exp-cmp-000/B", 0.1)
    >>> k.effect(Incident("cvr_drop", "exp-cmp-000/B", 0, 60, 0.5), r)
    >>> r.rate
    0.05
    """

    name: str
    targets: str  # what the target names: campaign, model, model/feature, ...
    topic: str  # the logical topic whose messages it changes
    stage: str  # the generator's stage that applies it (one of STAGES)
    check: TargetCheck
    effect: Callable[[Incident, Any], None]  # on the stage's value (_Rate, _Request, ...)
    factor: FactorRule = ANY_FACTOR
    experiment: bool = False  # on the experiments a scenario adds when asked

    def verdict(self, s: Scenario, inc: Incident) -> tuple[bool, str]:
        """Whether `inc` fits scenario `s`, and what its target (and factor) must be."""
        ok, what = self.check(s, inc)
        if self.factor is ANY_FACTOR:
            return ok, what
        return ok and self.factor.ok(inc.factor), f"{what}; factor {self.factor.text}"


# the stages, in the order the generator runs them for one event
STAGES = (
    "assignment",  # an impression's experiment arm (its share, crossovers)
    "clicks",  # an impression's CTR
    "conversions",  # a click's CVR
    "features",  # an inference request's features
    "requests",  # its score, latency and error probability
    "arms",  # the same, by the arm of exp-model serving it
    "labels",  # its label (value and delay)
    "sensor-readings",  # a sensor reading's values
)


@dataclass(slots=True)
class _Rate:
    """An impression's CTR or its click's CVR, as incidents of its campaign or arm see it."""

    campaign: str
    arm: str  # EXPERIMENT/VARIANT, or "" / "None/None" outside experiments
    rate: float


@dataclass(slots=True)
class _Assignment:
    """The arm of an experiment's impression: the first arm's share, and crossovers."""

    experiment: str
    ad_id: str
    share: float = 0.5
    crossover: float = 0.0


@dataclass(slots=True)
class _Value:
    """One feature of an inference request: a number (+ its std) or the device (+ a draw)."""

    model: str
    feature: str
    value: Any  # float, or the device's name
    std: float = 0.0
    u: float = 1.0  # the device's drift draw


@dataclass(slots=True)
class _Request:
    """An inference request's logit, latency and error probability."""

    model: str
    arm: str | None
    z: float
    latency: float
    error_p: float


@dataclass(slots=True)
class _Label:
    """A label as it is being drawn: its value and delay, and its draws."""

    regressor: bool
    t: float
    y: float
    delay_s: float
    u_flip: float
    u_noise: float
    u_value: float
    prediction: float


@dataclass(slots=True)
class _Reading:
    """A sensor reading's values (and what a steady rise needs)."""

    values: dict[str, float]
    noise: dict[str, float]
    interval_ms: int
    t: float
    rise_start: dict[Incident, float]
    rising: bool = False


def _apply(incidents: list[Incident], value: Any) -> Any:
    """Let each incident (already live and on this value's target) act on `value`, in order."""
    for inc in incidents:
        INCIDENT_KINDS[inc.kind].effect(inc, value)
    return value


# -- target checks


def _campaign(s: Scenario, inc: Incident) -> tuple[bool, str]:
    campaigns = s.campaign_ids()
    return inc.target in campaigns, f"a campaign id: {_span(campaigns)} (--campaigns sets how many)"


def _experiment(s: Scenario, inc: Incident) -> tuple[bool, str]:
    experiments = ", ".join(s.experiment_ids()) or "none"
    return inc.target in s.experiment_ids(), f"an experiment, one of {experiments}"


def _model_feature(s: Scenario, inc: Incident) -> tuple[bool, str]:
    models = s.model_ids()
    features = [f.name for f in FEATURES] + [CATEGORICAL]
    model, _, feature = inc.target.partition("/")
    what = f"MODEL/FEATURE, model {_span(models)}, feature one of {', '.join(features)}"
    return model in models and feature in features, what


def _model(s: Scenario, inc: Incident) -> tuple[bool, str]:
    models = s.model_ids()
    return inc.target in models, f"a model id: {_span(models)}"


def _labelled_model(s: Scenario, inc: Incident) -> tuple[bool, str]:
    targets = s.model_ids() + s.regressor_ids()
    return inc.target in targets and s.labels, f"a model id: {_span(targets)} (with labels on)"


def _sensor_metric(s: Scenario, inc: Incident) -> tuple[bool, str]:
    sensors = s.sensor_ids()
    sensor, _, metric = inc.target.partition("/")
    what = f"SENSOR[/METRIC], sensor {_span(sensors)}, metric one of {', '.join(METRICS)}"
    return sensor in sensors and (metric or SPIKE_METRIC) in SENSOR_METRICS, what


def _sensor(s: Scenario, inc: Incident) -> tuple[bool, str]:
    sensors = s.sensor_ids()
    return inc.target in sensors, f"a sensor id: {_span(sensors)}"


def _model_arm(s: Scenario, inc: Incident) -> tuple[bool, str]:
    ok = s.experiment_models > 0 and inc.target in (f"{MODEL_EXPERIMENT}/{a}" for a in ARMS)
    return ok, f"{MODEL_EXPERIMENT}/ARM (arms {', '.join(ARMS)}; --experiment-models > 0)"


def _experiment_arm(s: Scenario, inc: Incident) -> tuple[bool, str]:
    arms = [f"{e}/{a}" for e in s.experiment_ids() for a in ("A", "B")]
    if s.shared_experiment_campaigns > 0:
        arms += [f"{SHARED_EXPERIMENT}/{a}" for a in ARMS]
    return inc.target in arms, f"an experiment's arm, one of {', '.join(arms) or 'none'}"


def _converting_arm(s: Scenario, inc: Incident) -> tuple[bool, str]:
    ok, what = _experiment_arm(s, inc)
    return ok and s.cvr > 0, what  # no conversions (cvr 0): nothing to drop


def _shared(s: Scenario, inc: Incident) -> tuple[bool, str]:
    experiment, _, ad = inc.target.partition("/")
    ok = s.shared_experiment_campaigns > 0 and experiment == SHARED_EXPERIMENT and not ad
    return ok, f"{SHARED_EXPERIMENT} (--shared-experiment-campaigns > 0)"


def _shared_ad(s: Scenario, inc: Incident) -> tuple[bool, str]:
    experiment, _, ad = inc.target.partition("/")
    ok = s.shared_experiment_campaigns > 0 and experiment == SHARED_EXPERIMENT and bool(ad)
    return ok, f"{SHARED_EXPERIMENT}/AD_ID (--shared-experiment-campaigns > 0)"


# -- effects


def _scale_ctr(inc: Incident, r: _Rate) -> None:
    if inc.target in (r.campaign, r.arm):
        r.rate *= inc.factor


def _scale_cvr(inc: Incident, r: _Rate) -> None:
    if inc.target == r.arm:
        r.rate *= inc.factor


def _set_share(inc: Incident, a: _Assignment) -> None:
    if inc.target == a.experiment:
        a.share = inc.factor


def _set_ad_share(inc: Incident, a: _Assignment) -> None:
    experiment, _, ad = inc.target.partition("/")
    if experiment == a.experiment and ad == a.ad_id:
        a.share = inc.factor


def _set_crossover(inc: Incident, a: _Assignment) -> None:
    if inc.target == a.experiment:
        a.crossover = inc.factor


def _drift_feature(inc: Incident, v: _Value) -> None:
    if inc.target != f"{v.model}/{v.feature}":
        return
    if v.feature == CATEGORICAL:  # that share of requests moves to the rarest device
        if v.u < inc.factor:
            v.value = DEVICES[-1]
    else:
        v.value += inc.factor * v.std


def _shift_prediction(inc: Incident, r: _Request) -> None:
    if inc.target == r.model:
        r.z += inc.factor


def _scale_latency(inc: Incident, r: _Request) -> None:
    if inc.target == r.model:
        r.latency *= inc.factor


def _set_error(inc: Incident, r: _Request) -> None:
    if inc.target == r.model:
        r.error_p = inc.factor


def _scale_arm_latency(inc: Incident, r: _Request) -> None:
    if inc.target == f"{MODEL_EXPERIMENT}/{r.arm}":
        r.latency *= inc.factor


def _set_arm_error(inc: Incident, r: _Request) -> None:
    if inc.target == f"{MODEL_EXPERIMENT}/{r.arm}":
        r.error_p = inc.factor  # the draw is taken either way


def _drift_concept(inc: Incident, lab: _Label) -> None:
    if lab.regressor:
        lab.y *= 1.0 + inc.factor
    elif lab.u_flip < inc.factor:
        lab.y = 1.0 - lab.y


def _add_label_noise(inc: Incident, lab: _Label) -> None:
    if lab.u_noise < inc.factor:
        if lab.regressor:
            lab.y = round(lab.u_value * 2 * lab.prediction, 2)
        else:
            lab.y = float(lab.u_value < 0.5)


def _delay_labels(inc: Incident, lab: _Label) -> None:
    lab.delay_s *= 1.0 + inc.factor * (lab.t - inc.start_s) / inc.duration_s


def _spike(inc: Incident, r: _Reading) -> None:
    metric = inc.target.partition("/")[2] or SPIKE_METRIC
    r.values[metric] += inc.factor * metric_std(metric)


def _regime(inc: Incident, r: _Reading) -> None:
    for m, sign in REGIME_DIRECTION.items():
        r.values[m] += sign * inc.factor * metric_std(m)


def _rise(inc: Incident, r: _Reading) -> None:
    # a steady ramp from where it was, jitter < 1/4 step
    start = r.rise_start.setdefault(inc, r.values["temperature"])
    step = inc.factor * r.interval_ms / 1000 / inc.duration_s
    jitter = 0.25 * step * max(-1.0, min(1.0, r.noise["temperature"]))
    ramp = inc.factor * (r.t - inc.start_s) / inc.duration_s
    r.values["temperature"] = start + ramp + jitter
    r.rising = True


_MODEL_OUTPUT = ("model", "inference-logs", "requests", _model)
# in this order: KINDS (the base scenario's), then EXPERIMENT_KINDS
INCIDENT_KINDS: dict[str, IncidentKind] = {
    k.name: k
    for k in (
        IncidentKind("ctr_drop", "campaign", "clicks", "clicks", _campaign, _scale_ctr),
        IncidentKind(
            "srm", "experiment", "impressions", "assignment", _experiment, _set_share, OPEN_UNIT
        ),
        IncidentKind(
            "feature_drift",
            "model/feature",
            "inference-logs",
            "features",
            _model_feature,
            _drift_feature,
        ),
        IncidentKind("prediction_shift", *_MODEL_OUTPUT, _shift_prediction),
        IncidentKind("latency_spike", *_MODEL_OUTPUT, _scale_latency, NON_NEGATIVE),
        IncidentKind("error_spike", *_MODEL_OUTPUT, _set_error, UNIT),
        IncidentKind(
            "sensor_spike",
            "sensor[/metric]",
            "sensor-readings",
            "sensor-readings",
            _sensor_metric,
            _spike,
        ),
        IncidentKind(
            "sensor_rise", "sensor", "sensor-readings", "sensor-readings", _sensor, _rise, DEGREES
        ),
        IncidentKind(
            "sensor_regime", "sensor", "sensor-readings", "sensor-readings", _sensor, _regime
        ),
        IncidentKind(
            "concept_drift", "model", "labels", "labels", _labelled_model, _drift_concept, UNIT
        ),
        IncidentKind(
            "label_noise", "model", "labels", "labels", _labelled_model, _add_label_noise, UNIT
        ),
        IncidentKind(
            "label_delay", "model", "labels", "labels", _labelled_model, _delay_labels, NON_NEGATIVE
        ),
        IncidentKind(
            "arm_latency",
            "experiment/arm",
            "inference-logs",
            "arms",
            _model_arm,
            _scale_arm_latency,
            experiment=True,
        ),
        IncidentKind(
            "arm_error",
            "experiment/arm",
            "inference-logs",
            "arms",
            _model_arm,
            _set_arm_error,
            experiment=True,
        ),
        IncidentKind(
            "ramp",
            "experiment",
            "impressions",
            "assignment",
            _shared,
            _set_share,
            OPEN_UNIT,
            experiment=True,
        ),
        IncidentKind(
            "crossover",
            "experiment",
            "impressions",
            "assignment",
            _shared,
            _set_crossover,
            OPEN_UNIT,
            experiment=True,
        ),
        IncidentKind(
            "srm_dimension",
            "experiment/ad",
            "impressions",
            "assignment",
            _shared_ad,
            _set_ad_share,
            OPEN_UNIT,
            experiment=True,
        ),
        IncidentKind(
            "cvr_drop",
            "experiment/arm",
            "conversions",
            "conversions",
            _converting_arm,
            _scale_cvr,
            BELOW_ONE,
            experiment=True,
        ),
        IncidentKind(
            "arm_ctr_drop",
            "experiment/arm",
            "clicks",
            "clicks",
            _experiment_arm,
            _scale_ctr,
            BELOW_ONE,
            experiment=True,
        ),
    )
}
KINDS = tuple(name for name, k in INCIDENT_KINDS.items() if not k.experiment)
# on the experiments a scenario adds when asked (shared_experiment_campaigns,
# experiment_models): not in `default_incidents`, whose scenario has none
EXPERIMENT_KINDS = tuple(name for name, k in INCIDENT_KINDS.items() if k.experiment)
ALL_KINDS = KINDS + EXPERIMENT_KINDS
LABEL_KINDS = tuple(name for name, k in INCIDENT_KINDS.items() if k.stage == "labels")


def _staged(live: list[Incident], stage: str) -> list[Incident]:
    """The live incidents a stage of the generator applies, in their order."""
    return [i for i in live if INCIDENT_KINDS[i.kind].stage == stage]


# -- the simulator ------------------------------------------------------------


class Simulator:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = random.Random(scenario.seed)  # impressions and clicks
        self.irng = random.Random(f"{scenario.seed}/inference-logs")
        self.srng = random.Random(f"{scenario.seed}/sensor-readings")
        # labels and the regressor draw from streams of their own: switching them on
        # leaves every other topic byte-identical
        self.lrng = random.Random(f"{scenario.seed}/labels")
        self.rrng = random.Random(f"{scenario.seed}/regressor")
        self.crng = random.Random(f"{scenario.seed}/conversions")
        self.tag = scenario.run_tag()  # event ids unique per run (Scenario.run_tag)
        ids = scenario.campaign_ids()
        self.base_ctr = {c: self.rng.uniform(0.02, 0.06) for c in ids}
        weights = [self.rng.uniform(0.5, 1.5) for _ in ids]
        total = sum(weights)
        self.campaigns = ids
        self.cum_weights = [w / total for w in itertools.accumulate(weights)]
        self.experiments = {c: f"exp-{c}" for c in ids[: scenario.experiment_campaigns]}
        self.serving = {c: scenario.model_of(c) for c in ids}
        self.shared = set(scenario.shared_campaigns())
        self.experiment_models = set(scenario.model_ids()[: scenario.experiment_models])
        self.base_cvr = {c: scenario.cvr * self.crng.uniform(0.6, 1.4) for c in ids}
        self.counts: dict[str, int] = {}
        self.models = [self._model(i, m) for i, m in enumerate(scenario.model_ids())]
        self.sensors = [self._sensor(i, sid) for i, sid in enumerate(scenario.sensor_ids())]
        self._check_incidents()

    def _model(self, i: int, model_id: str) -> _Model:
        rng = self.irng
        intercept = rng.uniform(-1.8, -0.6)
        latency = rng.uniform(100.0, 200.0)  # p99 quiet below the 500 ms line
        raw = [w * rng.uniform(0.8, 1.2) for w in DEVICE_WEIGHTS]
        total = sum(raw)
        cum = tuple(sum(raw[: k + 1]) / total for k in range(len(raw)))
        return _Model(model_id, intercept, latency, cum)

    def _sensor(self, i: int, sensor_id: str) -> _Sensor:
        rng = self.srng
        base = {m: rng.uniform(lo, hi) for m, (lo, hi, _, _) in SENSOR_METRICS.items()}
        interval = max(1, round(1000 / self.s.sensor_readings_per_s))
        first = self.s.start_ms + rng.randrange(interval)
        return _Sensor(sensor_id, self.s.site_of(i), base, first, interval)

    def _check_incidents(self) -> None:
        check_incidents(self.s)

    # -- the stream ----------------------------------------------------------

    def messages(self) -> Iterator[Message]:
        s = self.s
        pending: list[tuple[int, int, bytes, str]] = []  # (ts, seq, value, key) of clicks
        self._labels: list[tuple[int, int, bytes, str]] = []  # the same, of labels
        self._conversions: list[tuple[int, int, bytes, str]] = []  # ... of conversions
        self._label_seq = 0
        self._reg_requests = 0
        self._seq = 0
        self._requests = 0
        self._rise_start: dict[Incident, float] = {}
        for second in range(s.duration_s):
            base = s.start_ms + second * 1000
            horizon = base + 1000
            live = [i for i in s.incidents if i.start_s < second + 1 and i.end_s > second]
            batch: list[tuple[int, Message]] = []
            self._ads(base, live, batch, pending)
            while pending and pending[0][0] < horizon:
                ts, _, value, key = heapq.heappop(pending)
                batch.append((ts, ("clicks", key, value)))
            if self.models:
                self._inference(base, live, batch)
            if s.regressor_per_s > 0:
                self._regressor(base, live, batch)
            while self._labels and self._labels[0][0] < horizon:
                ts, _, value, key = heapq.heappop(self._labels)
                batch.append((ts, ("labels", key, value)))
            while self._conversions and self._conversions[0][0] < horizon:
                ts, _, value, key = heapq.heappop(self._conversions)
                batch.append((ts, ("conversions", key, value)))
            self._sensor_readings(horizon, live, batch)
            batch.sort(key=lambda item: item[0])
            counts = self.counts
            for _, message in batch:
                counts[message[0]] = counts.get(message[0], 0) + 1
                yield message
            yield ("__tick__", "", str(horizon).encode())

    def _t(self, ts: int) -> float:
        return (ts - self.s.start_ms) / 1000

    def _ads(
        self,
        base: int,
        live: list[Incident],
        batch: list[tuple[int, Message]],
        pending: list[tuple[int, int, bytes, str]],
    ) -> None:
        s, rng, tag = self.s, self.rng, self.tag
        # a campaign's CTR (ctr_drop), or an experiment arm's (arm_ctr_drop)
        drops = _staged(live, "clicks")
        assignment = _staged(live, "assignment")  # srm; ramp, crossover, srm_dimension
        cvr_drops = _staged(live, "conversions")
        for _ in range(_poisson(rng, s.impressions_per_s)):
            ts = base + rng.randrange(1000)
            t = self._t(ts)
            campaign = rng.choices(self.campaigns, cum_weights=self.cum_weights)[0]
            self._seq += 1
            seq = self._seq
            imp_id = f"imp-{tag}-{seq}"
            user = f"user-{rng.randrange(s.users)}"
            imp: dict[str, Any] = {
                "impression_id": imp_id,
                "ts": ts,
                "campaign_id": campaign,
                "user_id": user,
                "ad_id": f"ad-{rng.randrange(5)}",
            }
            model = self.serving[campaign]
            if model is not None:
                imp["model_id"] = model  # no draw: the traffic is otherwise unchanged
            experiment = self.experiments.get(campaign)
            if experiment is not None:
                share_a = 0.5
                if assignment:
                    arms = _Assignment(experiment, imp["ad_id"], share_a)
                    share_a = _apply([i for i in assignment if i.active(t)], arms).share
                imp["experiment"] = experiment
                # sticky per user (a hash of the user; the draw is kept so the stream of
                # later draws is what it was): a user stays in one variant
                rng.random()
                sticky = zlib.crc32(f"{experiment}/{user}".encode()) / 2**32
                imp["variant"] = "A" if sticky < share_a else "B"
            elif campaign in self.shared:
                self._shared_arm(imp, seq, t, assignment, batch)
            batch.append((ts, ("impressions", campaign, orjson.dumps(imp))))
            ctr = self.base_ctr[campaign]
            if drops:
                arm = f"{imp.get('experiment')}/{imp.get('variant')}"
                ctr = _apply([i for i in drops if i.active(t)], _Rate(campaign, arm, ctr)).rate
            clicked = rng.random() < ctr
            # drawn whether or not it clicks, so a CTR change shifts no later draw
            delay = min(int(rng.expovariate(1 / s.click_delay_mean_s) * 1000), CLICK_DELAY_MAX_MS)
            clicks = 2 if rng.random() < s.duplicate_click_rate else 1
            if clicked:
                for c in range(clicks):
                    click = {
                        "click_id": f"clk-{tag}-{seq}-{c}",
                        "impression_id": imp_id,
                        "ts": ts + delay + c * 1500,
                        "campaign_id": campaign,
                        "user_id": user,
                    }
                    if "experiment" in imp:
                        click["experiment"] = imp["experiment"]
                    heapq.heappush(
                        pending, (click["ts"], seq * 4 + c, orjson.dumps(click), campaign)
                    )
                if s.cvr > 0:
                    self._convert(imp, seq, ts + delay, t, cvr_drops)
            if rng.random() < s.orphan_click_rate:
                orphan = {
                    "click_id": f"orphan-{tag}-{seq}",
                    "impression_id": f"unknown-{tag}-{seq}",
                    "ts": ts,
                    "campaign_id": campaign,
                    "user_id": user,
                }
                batch.append((ts, ("clicks", campaign, orjson.dumps(orphan))))

    def _convert(
        self, imp: dict[str, Any], seq: int, click_ts: int, t: float, live: list[Incident]
    ) -> None:
        """The conversion of an impression's first click, if it converts (three draws
        from the conversions' own stream whether or not: a CVR change shifts none)."""
        s, rng = self.s, self.crng
        campaign = imp["campaign_id"]
        cvr = self.base_cvr[campaign]
        if live:
            arm = f"{imp.get('experiment')}/{imp.get('variant')}"
            cvr = _apply([i for i in live if i.active(t)], _Rate(campaign, arm, cvr)).rate
        converts = rng.random() < cvr
        delay_s = rng.lognormvariate(
            math.log(s.conversion_delay_median_s), s.conversion_delay_sigma
        )
        value = rng.lognormvariate(math.log(s.order_value_median), s.order_value_sigma)
        if not converts:
            return
        delay_s = min(max(delay_s, s.conversion_delay_min_s), s.conversion_delay_max_s)
        conversion: dict[str, Any] = {
            "conversion_id": f"cnv-{self.tag}-{seq}",
            "click_id": f"clk-{self.tag}-{seq}-0",
            "ts": click_ts + round(delay_s * 1000),
            "campaign_id": campaign,
            "user_id": imp["user_id"],
            "value": round(value, 2),
        }
        if "experiment" in imp:
            conversion["experiment"] = imp["experiment"]
        heapq.heappush(
            self._conversions, (conversion["ts"], seq, orjson.dumps(conversion), campaign)
        )

    def _shared_arm(
        self,
        imp: dict[str, Any],
        seq: int,
        t: float,
        live: list[Incident],
        batch: list[tuple[int, Message]],
    ) -> None:
        """The arm of an impression of `exp-shared`, and its incidents."""
        arms = _Assignment(SHARED_EXPERIMENT, imp["ad_id"])
        if live:
            _apply([i for i in live if i.active(t)], arms)
        share, crossover = arms.share, arms.crossover
        # sticky assignment, as experimentation platforms do: the arm is a hash of the
        # user (no random draw), so a user stays in one arm unless the share moves
        arm = ARMS[0] if zlib.crc32(imp["user_id"].encode()) / 2**32 < share else ARMS[1]
        imp["experiment"] = SHARED_EXPERIMENT
        imp["variant"] = arm
        if crossover and _unit_hash(seq) < crossover:
            # the same user shown the other arm a moment later (no random draw)
            again = {**imp, "impression_id": f"{imp['impression_id']}-x", "ts": imp["ts"] + 1}
            again["variant"] = ARMS[1] if arm == ARMS[0] else ARMS[0]
            batch.append((again["ts"], ("impressions", imp["campaign_id"], orjson.dumps(again))))

    def _inference(self, base: int, live: list[Incident], batch: list[tuple[int, Message]]) -> None:
        s, rng = self.s, self.irng
        drifts = _staged(live, "features")
        outputs = _staged(live, "requests")
        arm_incidents = _staged(live, "arms")
        mine = drifts + outputs
        n_models = len(self.models)
        for _ in range(_poisson(rng, s.inference_per_s)):
            ts = base + rng.randrange(1000)
            t = self._t(ts)
            model = self.models[rng.randrange(n_models)]
            mid = model.model_id
            active = [i for i in mine if i.active(t) and i.target.partition("/")[0] == mid]
            drifting = [i for i in drifts if i in active]
            features: dict[str, float | str] = {}
            z = model.intercept
            for f in FEATURES:
                x = f.draw(rng)
                if drifting:
                    x = _apply(drifting, _Value(mid, f.name, x, f.std)).value
                x = round(x, f.decimals)
                features[f.name] = x
                z += f.weight * (x - f.mean) / f.std
            device = DEVICES[_pick(model.device_cum, rng.random())]
            u_drift = rng.random()
            if drifting:
                device = _apply(drifting, _Value(mid, CATEGORICAL, device, u=u_drift)).value
            features[CATEGORICAL] = device
            z += DEVICE_EFFECT[device] + rng.gauss(0.0, SCORE_NOISE)
            # the truth follows the unshifted score: the model is calibrated, and a
            # prediction_shift makes it wrong
            p_true = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            latency = model.latency_median_ms * math.exp(rng.gauss(0.0, LATENCY_SIGMA))
            error_p = s.inference_error_rate
            arm = None
            if mid in self.experiment_models:
                arm = ARMS[self._requests % 2]  # alternating: no random draw
            if outputs or arm_incidents:
                # the model's own incidents first, then its arm's (their factors multiply
                # in this order)
                request = _Request(mid, arm, z, latency, error_p)
                _apply([i for i in outputs if i in active], request)
                if arm is not None:
                    _apply([i for i in arm_incidents if i.active(t)], request)
                z, latency, error_p = request.z, request.latency, request.error_p
            failed = rng.random() < error_p
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            self._requests += 1
            log: dict[str, Any] = {
                "request_id": f"req-{self.tag}-{self._requests}",
                "ts": ts,
                "model_id": mid,
                "model_version": MODEL_VERSION,
                "features": features,
                "prediction": round(p, 5),
                "latency_ms": round(latency, 2),
                "status": "error" if failed else "ok",
            }
            if not failed:
                log["confidence"] = round(abs(2.0 * p - 1.0), 5)
            if arm is not None:
                log["experiment"] = MODEL_EXPERIMENT
                log["variant"] = arm
            batch.append((ts, ("inference-logs", mid, orjson.dumps(log))))
            if s.labels:
                self._label(log, live, failed, lambda u, p=p_true: 1.0 if u < p else 0.0)

    def _label(
        self,
        log: dict[str, Any],
        live: list[Incident],
        failed: bool,
        truth: Callable[[float], float],
    ) -> None:
        """Schedule the label of one request. Every draw is made whatever happens
        to it, so an incident changes no other label (byte-identical outside it)."""
        s, rng = self.s, self.lrng
        u_truth, u_missing, u_flip, u_noise, u_value = (rng.random() for _ in range(5))
        delay_s = min(
            s.label_delay_max_s,
            s.label_delay_median_s * math.exp(s.label_delay_sigma * rng.gauss(0.0, 1.0)),
        )
        if failed or u_missing < s.label_missing_rate:
            return
        mid, ts = log["model_id"], log["ts"]
        t = self._t(ts)
        y = truth(u_truth)
        regressor = mid == REGRESSOR
        mine = [i for i in _staged(live, "labels") if i.target == mid and i.active(t)]
        if mine:
            lab = _Label(regressor, t, y, delay_s, u_flip, u_noise, u_value, log["prediction"])
            y, delay_s = _apply(mine, lab).y, lab.delay_s
        label = {
            "request_id": log["request_id"],
            "ts": ts + max(1, round(delay_s * 1000)),
            "model_id": mid,
            "label": round(y, 2) if regressor else int(y),
        }
        self._label_seq += 1
        heapq.heappush(self._labels, (label["ts"], self._label_seq, orjson.dumps(label), mid))

    def _regressor(self, base: int, live: list[Incident], batch: list[tuple[int, Message]]) -> None:
        """A delivery-time model (minutes): prediction 20 + 4 z_amount + 3 z_distance,
        truth = prediction + N(0, 3) (floored at 1)."""
        s, rng = self.s, self.rrng
        for _ in range(_poisson(rng, s.regressor_per_s)):
            ts = base + rng.randrange(1000)
            features: dict[str, float | str] = {}
            z: dict[str, float] = {}
            for f in FEATURES:
                x = round(f.draw(rng), f.decimals)
                features[f.name] = x
                z[f.name] = (x - f.mean) / f.std
            pred = max(1.0, 20.0 + 4.0 * z["amount"] + 3.0 * z["distance_km"])
            noise = rng.gauss(0.0, 3.0)
            failed = rng.random() < s.inference_error_rate
            latency = 80.0 * math.exp(rng.gauss(0.0, LATENCY_SIGMA))
            self._reg_requests += 1
            log: dict[str, Any] = {
                "request_id": f"reg-{self.tag}-{self._reg_requests}",
                "ts": ts,
                "model_id": REGRESSOR,
                "model_version": MODEL_VERSION,
                "features": features,
                "prediction": round(pred, 2),
                "latency_ms": round(latency, 2),
                "status": "error" if failed else "ok",
            }
            batch.append((ts, ("inference-logs", REGRESSOR, orjson.dumps(log))))
            if s.labels:
                truth = max(1.0, pred + noise)
                self._label(log, live, failed, lambda _u, v=truth: v)

    def _sensor_readings(
        self, horizon: int, live: list[Incident], batch: list[tuple[int, Message]]
    ) -> None:
        rng = self.srng
        mine = _staged(live, "sensor-readings")
        for sensor in self.sensors:
            sid = sensor.sensor_id
            targeted = [i for i in mine if i.target.partition("/")[0] == sid]
            while sensor.next_ts < horizon:
                ts = sensor.next_ts
                sensor.next_ts += sensor.interval_ms
                phi = math.exp(-sensor.interval_ms / 1000 / LOAD_TAU_S)
                sensor.load = phi * sensor.load + math.sqrt(1 - phi * phi) * rng.gauss(0.0, 1.0)
                noise = {m: rng.gauss(0.0, 1.0) for m in METRICS}
                values = {
                    m: sensor.base[m] + coef * sensor.load + sd * noise[m]
                    for m, (_, _, coef, sd) in SENSOR_METRICS.items()
                }
                t = self._t(ts)
                rising = False
                if targeted:
                    state = _Reading(values, noise, sensor.interval_ms, t, self._rise_start)
                    rising = _apply([i for i in targeted if i.active(t)], state).rising
                values["vibration"] = max(0.0, values["vibration"])
                reading = {
                    "sensor_id": sid,
                    "ts": ts,
                    "values": {
                        m: v if rising and m == "temperature" else round(v, 4)
                        for m, v in values.items()
                    },
                    "site": sensor.site,
                }
                batch.append((ts, ("sensor-readings", sid, orjson.dumps(reading))))


def _unit_hash(n: int) -> float:
    """A number in [0, 1) from an integer, without touching a random stream
    (Knuth's multiplicative hash)."""
    return ((n * 2654435761) % 2**32) / 2**32


def _pick(cum: tuple[float, ...], u: float) -> int:
    for k, c in enumerate(cum):
        if u < c:
            return k
    return len(cum) - 1


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method is slow for large lambda; a rounded normal is close enough there
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, lam**0.5)))
    threshold, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


# -- a default incident schedule ------------------------------------------------

MIN_GAP_S = 60.0  # quiet time after each incident of a lane
# the drift monitor's defaults (its windows, and the inference logs per model it
# learns a reference from), read from its config rather than repeated here
DRIFT_WINDOW_S = DriftConfig().window_ms / 1000
DRIFT_WARMUP_EVENTS = DriftConfig().warmup_events or 0


def default_incidents(
    duration_s: float,
    *,
    campaigns: int = Scenario.campaigns,
    experiment_campaigns: int = Scenario.experiment_campaigns,
    models: int = Scenario.models,
    sensors: int = Scenario.sensors,
    inference_per_s: float = Scenario.inference_per_s,
) -> list[Incident]:
    """One incident of every kind, spread over a run of `duration_s` seconds.

    The keyword arguments are the Scenario's (pass them when it is not the
    default one). The first max(20 % of the run, the drift warm-up) seconds
    are quiet: the drift warm-up is 1000 inference logs per model plus one
    whole 5-min window, as the warm-up reference absorbs whole windows; the
    last 10 % are quiet too. Incidents run in lanes that share no target
    (ads; each model; sensors, each incident on its own sensor); within a
    lane they follow one another with at least 60 s of quiet between them.
    Raises ValueError when the run is too short (below about 1500 s with the
    default rates).
    """
    if campaigns < 1 or experiment_campaigns < 1 or models < 1 or sensors < 1:
        raise ValueError("default incidents need a campaign, an experiment, a model and a sensor")
    if inference_per_s <= 0:
        raise ValueError("default incidents need inference traffic (inference_per_s > 0)")
    plan = _plan(
        float(duration_s), campaigns, experiment_campaigns, models, sensors, inference_per_s
    )
    if plan is None:
        shortest = next(
            d
            for d in range(60, 100_000, 60)
            if _plan(float(d), campaigns, experiment_campaigns, models, sensors, inference_per_s)
        )
        raise ValueError(
            f"a run of {duration_s:g} s is too short for the default incidents "
            f"(at least {shortest} s with these rates)"
        )
    return plan


def _plan(
    d: float, campaigns: int, experiments: int, models: int, sensors: int, rate: float
) -> list[Incident] | None:
    per_model = rate / models
    warm = max(0.2 * d, DRIFT_WARMUP_EVENTS / per_model + DRIFT_WINDOW_S + 30)
    tail = max(MIN_GAP_S, 0.1 * d)
    span = d - warm - tail
    ctr_target = f"cmp-{experiments:03d}" if campaigns > experiments else f"cmp-{campaigns - 1:03d}"
    m0, m1 = "model-0", f"model-{1 % models}"
    s1, s2, s3 = (f"sensor-{k % sensors:02d}" for k in (1, 2, 3))
    # (kind, target, duration, factor) per lane, in order
    lanes: dict[str, list[tuple[str, str, float, float]]] = {
        "ads": [
            ("ctr_drop", ctr_target, max(180.0, 0.125 * d), 0.25),
            ("srm", "exp-cmp-000", max(300.0, 0.125 * d), 0.4),
        ],
        m0: [
            ("latency_spike", m0, max(120.0, 0.05 * d), 3.0),
            ("feature_drift", f"{m0}/distance_km", max(300.0, 0.15 * d), 1.5),
            # the quality monitor's incident: the truth changes, not the inputs; the
            # reference (the first whole 5-min window of labels) is complete by then
            ("concept_drift", m0, max(300.0, 0.15 * d), 0.4),
        ],
        "sensors": [
            ("sensor_spike", f"{s1}/{SPIKE_METRIC}", 3.0, 8.0),
            ("sensor_rise", s2, max(330.0, 0.15 * d), 10.0),
            ("sensor_regime", s3, max(180.0, 0.1 * d), 6.0),
        ],
    }
    lanes.setdefault(m1, []).extend(
        [
            ("error_spike", m1, max(120.0, 0.05 * d), 0.2),
            ("prediction_shift", m1, max(300.0, 0.15 * d), 1.5),
        ]
    )
    incidents: list[Incident] = []
    for k, lane in enumerate(lanes.values()):
        durations = [round(x[2]) for x in lane]
        gap = (span - sum(durations)) / len(lane)
        if gap < MIN_GAP_S:
            return None
        t = warm + gap * k / len(lanes)  # stagger the lanes
        for (kind, target, _, factor), dur in zip(lane, durations, strict=True):
            incidents.append(Incident(kind, target, float(math.ceil(t)), float(dur), factor))
            t += dur + gap
    return sorted(incidents, key=lambda i: (i.start_s, i.kind))


# -- publishing -------------------------------------------------------------------


def publish(
    producer: Any,
    simulator: Simulator,
    speed: float | None,
    progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    topics: dict[str, str] | None = None,
) -> dict[str, int]:
    """Produce the simulator's messages; `speed` event-seconds per wall second (None: max).

    `topics` maps the logical topic names ("impressions", "clicks",
    "inference-logs", "sensor-readings", "labels") to the configured ones; a name it
    does not map is used as it is. Returns the messages per logical topic.
    """
    names = topics or {}
    started = time.monotonic()
    sim_start = simulator.s.start_ms
    sent = 0
    for topic, key, value in simulator.messages():
        if topic == "__tick__":
            horizon = int(value)
            elapsed_s = (horizon - sim_start) / 1000
            if progress:
                progress(int(elapsed_s), simulator.s.duration_s)
            if stop and stop():
                break
            if speed:
                delay = elapsed_s / speed - (time.monotonic() - started)
                if delay > 0:
                    producer.poll(0)
                    time.sleep(delay)
            continue
        name = names.get(topic, topic)
        while True:
            try:
                producer.produce(name, value, key=key.encode())
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return dict(simulator.counts)
