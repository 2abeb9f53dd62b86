"""The small detectors of `operators.detectors` against independent references."""

from __future__ import annotations

import doctest
import math

import msgspec
import numpy as np
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from scipy import stats

import operators.detectors.autoencoder as ae_module
import operators.detectors.episode as episode_module
import operators.detectors.interval as interval_module
import operators.detectors.likelihood as likelihood_module
import operators.detectors.tail as tail_module
import operators.detectors.trend as trend_module
from operators.detectors.autoencoder import Autoencoder
from operators.detectors.episode import Episode
from operators.detectors.likelihood import AnomalyLikelihood, normal_sf
from operators.detectors.tail import TailProbability
from operators.detectors.trend import (
    RiseDetector,
    mann_kendall_s,
    mann_kendall_var,
    theil_sen_slope,
)


@pytest.mark.parametrize(
    "module",
    [ae_module, episode_module, interval_module, likelihood_module, tail_module, trend_module],
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


# -- episode ---------------------------------------------------------------


def test_noisy_stretch_is_one_episode() -> None:
    e = Episode(quiet=3)
    flags = [True, False, True, False, False, True, False, False, False, False]
    changes = [e.update(f) for f in flags]
    assert changes == ["start", None, None, None, None, None, None, None, "end", None]


def test_cooldown_counts_readings() -> None:
    e = Episode(quiet=1, cooldown=2)
    changes = [e.update(f) for f in (True, False, True, True, True)]
    # ends at the 2nd reading; the 3rd and 4th are in the cooldown; the 5th starts anew
    assert changes == ["start", "end", None, None, "start"]


def test_episode_snapshot_round_trip() -> None:
    e = Episode(quiet=4, cooldown=1)
    for f in (True, False, False):
        e.update(f)
    r = Episode(quiet=4, cooldown=1)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(e.snapshot())))
    rest = (False, False, True)
    assert [e.update(f) for f in rest] == [r.update(f) for f in rest]


# -- likelihood --------------------------------------------------------------


def test_likelihood_matches_scipy_reference() -> None:
    """p = norm.sf of the short-term mean, standardised by the median and the
    normal-consistent MAD of the earlier short-term means (all normal here)."""
    rng = np.random.default_rng(3)
    scores = rng.gamma(2.0, 1.0, size=400)
    lk = AnomalyLikelihood(short=5, history=10_000, min_history=50, refit=1, alpha=1e-300)
    ps = [lk.score_one(float(s)) for s in scores]
    means = np.array([scores[max(0, i - 4) : i + 1].mean() for i in range(len(scores))])
    for i in (60, 150, 399):
        h = means[:i]  # every earlier mean is in the history (alpha admits all)
        center = np.median(h)
        scale = stats.median_abs_deviation(h, scale="normal")
        assert ps[i] == pytest.approx(stats.norm.sf((means[i] - center) / scale), rel=1e-9)
    assert ps[:50] == [1.0] * 50


def test_normal_sf_matches_scipy() -> None:
    for z in (-3.0, -0.5, 0.0, 1.0, 4.0, 8.0):
        assert normal_sf(z) == pytest.approx(stats.norm.sf(z), rel=1e-12)


def test_false_alarm_rate_on_iid_normal_scores_is_alpha() -> None:
    """The stated budget: P(p < alpha) ~= alpha per reading on normal data."""
    rng = np.random.default_rng(7)
    alpha = 0.01
    lk = AnomalyLikelihood(short=1, history=2000, min_history=500, refit=25, alpha=alpha)
    ps = np.array([lk.score_one(float(x)) for x in rng.normal(size=20_500)])[500:]
    rate = float(np.mean(ps < alpha))
    # binomial 99.9 % band around alpha for n = 20000, widened for the estimated scale
    assert 0.005 < rate < 0.017, rate


def test_anomalous_scores_do_not_enter_the_history() -> None:
    lk = AnomalyLikelihood(short=1, history=100, min_history=20, alpha=1e-3)
    rng = np.random.default_rng(0)
    for x in rng.normal(size=100):
        lk.score_one(float(x))
    before = list(lk.history)
    for _ in range(50):
        assert lk.score_one(100.0) < 1e-3  # a persisting shift stays improbable
    assert list(lk.history) == before


def test_likelihood_snapshot_round_trip() -> None:
    rng = np.random.default_rng(1)
    a = AnomalyLikelihood(short=3, min_history=10, refit=7, log=True)
    xs = rng.exponential(size=80)
    for x in xs[:40]:
        a.score_one(float(x))
    b = AnomalyLikelihood(short=3, min_history=10, refit=7, log=True)
    b.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot())))
    assert [a.score_one(float(x)) for x in xs[40:]] == [b.score_one(float(x)) for x in xs[40:]]


# -- autoencoder ---------------------------------------------------------------


def _loss(ae: Autoencoder, x: np.ndarray) -> float:
    _, x_hat = ae.forward(x)
    return 0.5 * float(np.sum((x_hat - x) ** 2))


@pytest.mark.parametrize("leak", [0.0, 1.0])
def test_gradients_match_finite_differences(leak: float) -> None:
    ae = Autoencoder(5, hidden=3, seed=1, leak=leak)
    x = np.random.default_rng(2).normal(size=5)
    grads = ae.gradients(x)
    h = 1e-6
    for name, param in ae.p.items():
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            old = param[idx]
            param[idx] = old + h
            up = _loss(ae, x)
            param[idx] = old - h
            down = _loss(ae, x)
            param[idx] = old
            numeric[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8)


def test_adam_step_matches_hand_reference() -> None:
    """Kingma & Ba's algorithm 1, written out once more for two steps."""
    ae = Autoencoder(3, hidden=2, seed=4, lr=0.01)
    ref = {k: v.copy() for k, v in ae.p.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(val) for k, val in ref.items()}
    xs = np.random.default_rng(5).normal(size=(2, 3))
    for t, x in enumerate(xs, start=1):
        h = np.tanh(ref["w1"] @ x + ref["b1"])
        g2 = ref["w2"] @ h + ref["b2"] - x
        g1 = (ref["w2"].T @ g2) * (1 - h**2)
        grads = {"w1": np.outer(g1, x), "b1": g1, "w2": np.outer(g2, h), "b2": g2}
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g**2
            m_hat = m[k] / (1 - 0.9**t)
            v_hat = v[k] / (1 - 0.999**t)
            ref[k] = ref[k] - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
        ae.learn_one(x)
    for k in ref:
        np.testing.assert_allclose(ae.p[k], ref[k], rtol=1e-12, atol=1e-14)


def test_autoencoder_snapshot_is_msgpack_and_round_trips() -> None:
    rng = np.random.default_rng(6)
    a = Autoencoder(4, hidden=2, seed=0)
    for x in rng.normal(size=(30, 4)):
        a.learn_one(x)
    b = Autoencoder.from_snapshot(msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot())))
    for x in rng.normal(size=(10, 4)):
        a.learn_one(x)
        b.learn_one(x)
    x = rng.normal(size=4)
    assert a.score_one(x) == b.score_one(x)
    assert math.isfinite(a.score_one(x))


# -- Mann-Kendall rise ---------------------------------------------------------


def test_incremental_s_equals_the_definition_with_ties_and_eviction() -> None:
    rng = np.random.default_rng(11)
    xs = [float(v) for v in rng.integers(0, 6, size=200)]  # many ties
    d = RiseDetector(size=25)
    for i, x in enumerate(xs):
        d.learn_one(x)
        window = xs[max(0, i - 24) : i + 1]
        assert d.s == mann_kendall_s(window)


def test_s_and_p_match_scipy_kendalltau_without_ties() -> None:
    rng = np.random.default_rng(12)
    xs = list(rng.normal(size=40) + 0.05 * np.arange(40))
    d = RiseDetector(size=40)
    for x in xs:
        d.learn_one(float(x))
    n = len(xs)
    tau = stats.kendalltau(np.arange(n), xs).statistic
    assert d.s == round(tau * n * (n - 1) / 2)
    var = n * (n - 1) * (2 * n + 5) / 18
    assert d.p_value() == pytest.approx(stats.norm.sf((d.s - 1) / math.sqrt(var)), rel=1e-12)


def test_tie_corrected_variance_by_hand() -> None:
    # n = 5 with one pair of ties: [5*4*15 - 2*1*9] / 18 = (300 - 18) / 18
    assert mann_kendall_var([1.0, 2.0, 2.0, 3.0, 4.0]) == pytest.approx(282 / 18)


def test_theil_sen_matches_scipy() -> None:
    rng = np.random.default_rng(13)
    xs = list(rng.normal(size=30) + 0.3 * np.arange(30))
    assert theil_sen_slope(xs) == pytest.approx(stats.theilslopes(xs).slope, rel=1e-12)
    d = RiseDetector(size=30)
    for x in xs:
        d.learn_one(float(x))
    total, scale = d.fit()
    ref = stats.theilslopes(xs)
    # the intercept is median(x_i - b i) (scipy's is median(x) - b median(i))
    i = np.arange(30)
    a = np.median(np.asarray(xs) - ref.slope * i)
    resid = np.asarray(xs) - (a + ref.slope * i)
    assert total == pytest.approx(ref.slope * 29, rel=1e-12)
    assert scale == pytest.approx(stats.norm.ppf(0.75) ** -1 * np.median(np.abs(resid)), rel=1e-9)


def test_rise_detector_snapshot_round_trip() -> None:
    d = RiseDetector(size=10)
    for x in (1.0, 3.0, 2.0, 5.0):
        d.learn_one(x)
    r = RiseDetector(size=10)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(d.snapshot())))
    for x in (4.0, 6.0, 7.0):
        d.learn_one(x)
        r.learn_one(x)
    assert (d.s, d.p_value()) == (r.s, r.p_value())


def test_incremental_tie_variance_equals_the_definition() -> None:
    rng = np.random.default_rng(14)
    xs = [float(v) for v in rng.integers(0, 4, size=120)]
    d = RiseDetector(size=15)
    for i, x in enumerate(xs):
        d.learn_one(x)
        window = xs[max(0, i - 14) : i + 1]
        n = len(window)
        if n >= 3 and d.s:
            var = mann_kendall_var(window)
            sign = 1 if d.s > 0 else -1
            assert d.z_score() == pytest.approx((d.s - sign) / math.sqrt(var), rel=1e-12)


def test_batch_gradients_are_the_mean_of_single_gradients() -> None:
    ae = Autoencoder(4, hidden=2, seed=3)
    xs = np.random.default_rng(8).normal(size=(6, 4))
    batch = ae.batch_gradients(xs)
    singles = [ae.gradients(x) for x in xs]
    for k in batch:
        np.testing.assert_allclose(batch[k], np.mean([g[k] for g in singles], axis=0), rtol=1e-12)


# -- tail probability (peaks over threshold) -------------------------------------


def test_tail_matches_numpy_body_and_exponential_tail() -> None:
    """Body: the empirical survival function; tail: share * exp(-(s - u) / beta) with
    u the (1 - tail) order statistic and beta the mean excess (numpy, by hand)."""
    rng = np.random.default_rng(15)
    xs = rng.exponential(size=1000)
    t = TailProbability(history=1000, min_history=100, tail=0.1)
    for x in xs:
        t.learn_one(float(x))
    v = np.sort(xs)
    k = 100
    u = v[1000 - k - 1]
    beta = np.mean(v[1000 - k :] - u)
    assert t.score_one(0.5) == pytest.approx(np.mean(xs >= 0.5), rel=1e-12)
    assert t.score_one(5.0) == pytest.approx(0.1 * np.exp(-(5.0 - u) / beta), rel=1e-12)
    # and the fit is right for exponential scores, P(X > 6) = exp(-6), within the
    # sampling error of beta from 100 excesses (about 10 %, amplified 3.7x at s = 6)
    assert 0.5 < t.score_one(6.0) / math.exp(-6.0) < 2.0


def test_tail_false_alarm_rate_on_normal_scores() -> None:
    """|z| of normal readings, p below 1e-3: about 1e-3 of them (the budget held)."""
    rng = np.random.default_rng(16)
    t = TailProbability(history=1000, min_history=100)
    flagged = judged = 0
    for x in np.abs(rng.normal(size=60_000)):
        p = t.score_one(float(x))
        if p is None or p >= 1e-3:
            t.learn_one(float(x))
        if p is not None:
            judged += 1
            flagged += p < 1e-3
    assert 0.0003 < flagged / judged < 0.003, flagged / judged


def test_tail_snapshot_round_trip() -> None:
    rng = np.random.default_rng(17)
    a = TailProbability(history=300, min_history=50, refit=7)
    for x in rng.exponential(size=200):
        a.learn_one(float(x))
    a.score_one(1.0)  # a fit in use
    for x in rng.exponential(size=3):
        a.learn_one(float(x))
    b = TailProbability(history=300, min_history=50, refit=7)
    b.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot())))
    for s in (0.3, 2.0, 7.0):
        assert a.score_one(s) == b.score_one(s)


@settings(max_examples=80, deadline=None)
@given(
    history=st.integers(10, 80),
    scores=st.lists(
        st.one_of(st.floats(0.0, 10.0), st.sampled_from([0.0, -0.0, 1.0])),
        min_size=10,
        max_size=300,
    ),
    asks=st.lists(st.integers(0, 299), max_size=20),
    last_ask=st.integers(0, 40),
    refit=st.integers(1, 30),
)
def test_a_packed_tail_snapshot_restores_what_the_plain_one_does(
    history: int, scores: list[float], asks: list[int], last_ask: int, refit: int
) -> None:
    """`snapshot_packed` / `restore_packed` (the sensor monitor's format 3: the history
    as float64 bytes, the fitted copy sharing what it has in common with the history)
    against `snapshot` / `restore` (lists): the same history, fit and fitted values, bit
    for bit, at fits in use and not, rings full and growing, signed zeros included."""
    a = TailProbability(history=history, min_history=10, refit=refit)
    fitted = {*asks, len(scores) - 1 - last_ask}  # (the last: a fit often still in use)
    for i, x in enumerate(scores):
        a.learn_one(x)
        if i in fitted:
            a.score_one(x)  # a fit (when due), in use until `refit` more scores
    packed = msgspec.msgpack.decode(
        msgspec.msgpack.encode(a.snapshot_packed()), type=tail_module.PackedTailState
    )
    plain = msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot()))
    b = TailProbability(history=history, min_history=10, refit=refit)
    b.restore_packed(packed)
    c = TailProbability(history=history, min_history=10, refit=refit)
    c.restore(plain)
    assert b.ordered().tobytes() == c.ordered().tobytes() == a.ordered().tobytes()
    assert b.fitted.tobytes() == c.fitted.tobytes()
    assert (b.since_fit, b.u, b.beta, b.tail_share) == (c.since_fit, c.u, c.beta, c.tail_share)
    if packed.fit is not None:
        assert b.fitted.tobytes() == a.fitted.tobytes()
        assert len(packed.fit.head) // 8 + packed.fit.shared == len(a.fitted)
    note(f"fit in use: {packed.fit is not None}, shared: {packed.fit and packed.fit.shared}")
    event(f"fit in use, sharing: {packed.fit is not None and packed.fit.shared > 0}")


def test_a_packed_tail_fit_shares_the_history_it_has_in_common() -> None:
    """A full history 5 scores after its fit: the fitted copy is written as the 5 scores
    that have left the history, the rest taken from the history itself."""
    a = TailProbability(history=100, min_history=10, refit=25)
    for x in np.random.default_rng(3).exponential(size=150):
        a.learn_one(float(x))
    a.score_one(9.0)  # the fit
    for x in (0.1, 0.2, 0.3, 0.4, 0.5):
        a.learn_one(x)
    fit = a.snapshot_packed().fit
    assert fit is not None and (len(fit.head) // 8, fit.shared) == (5, 95)


# -- small-sample prediction-interval p-values (issue 14's warm-up) -----------------


@pytest.mark.parametrize("n", [2, 5, 30, 300])
def test_zscore_p_is_scipys_prediction_interval(n: int) -> None:
    for z in (0.0, 1.0, 3.0, 6.0):
        ref = 2 * stats.t.sf(z / math.sqrt(1 + 1 / n), n - 1)
        assert interval_module.zscore_p(z, n) == pytest.approx(ref, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("n", [30, 60])
def test_small_sample_p_values_hold_their_rate_by_monte_carlo(n: int) -> None:
    """Windows of n i.i.d. normal readings and a new one (numpy, an independent
    simulation): the share of new readings with p < a is a, up to Monte Carlo error
    and the t approximation of the IQR statistic (conservative at n = 30)."""
    rng = np.random.default_rng(n)
    reps = 200_000
    w = rng.standard_normal((reps, n))
    x = rng.standard_normal(reps)
    q1, q3 = np.percentile(w, [25, 75], axis=1)
    spread = np.abs(x - 0.5 * (q1 + q3)) / (q3 - q1)
    z = np.abs(x - w.mean(axis=1)) / w.std(axis=1, ddof=1)
    for a in (1e-2, 1e-3):
        # the statistic's critical value for p = a, by bisection on the monotone p
        for p_of, stat in ((interval_module.iqr_p, spread), (interval_module.zscore_p, z)):
            lo, hi = 0.0, 100.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if p_of(mid, n) > a else (lo, mid)
            rate = float(np.mean(stat > hi))
            se = math.sqrt(a / reps)
            assert rate < a + 4 * se + 0.15 * a, (p_of.__name__, a, rate)
            assert rate > a - 4 * se - 0.25 * a, (p_of.__name__, a, rate)


def test_plain_tukey_fences_on_30_readings_cross_far_above_their_large_sample_rate() -> None:
    """Why the warm-up needs the correction: Q3 + 3 IQR (the sensor_iqr rule's line) is
    crossed with probability 2 * P(Z > 4.72) = 2.4e-6 with known quartiles, but about
    300x as often against 30 readings (7.3e-4); iqr_p puts that line at its true rate."""
    rng = np.random.default_rng(3)
    reps, n = 400_000, 30
    w = rng.standard_normal((reps, n))
    x = rng.standard_normal(reps)
    q1, q3 = np.percentile(w, [25, 75], axis=1)
    iqr = q3 - q1
    crossed = float(np.mean((x > q3 + 3 * iqr) | (x < q1 - 3 * iqr)))
    assert crossed > 100 * 2 * stats.norm.sf(0.6745 + 3 * 1.349)
    # the spread of that line: 0.5 + 3 = 3.5 IQRs from the midhinge
    assert interval_module.iqr_p(3.5, n) == pytest.approx(crossed, rel=0.2)
