"""Small-sample tail probabilities of a new reading against a window of n readings.

The z line and Tukey's fences treat the window's mean/std resp. quartiles as if
they were the series' true values. With few readings they are not: a window of
30 i.i.d. normal readings estimates sigma by IQR / 1.349 with a relative
standard error of sqrt(1.36 / 30) = 21 % (below), so on about one window in six
Tukey's fence Q3 + 1.5 IQR sits a fifth nearer the median than the true
quartiles' fence; the z line has the same problem, less of it. So a young
series (or one sampled slowly, whose window holds only `min_points` readings)
crosses its lines far more often than their nominal rate: Q3 + 3 IQR, 2.3e-6
with known quartiles, is crossed with probability 7.3e-4 against 30 readings
(tests/test_detectors.py). These functions give the probability that a new
reading from the same normal population lies at least as far out,
**accounting for the estimation error of the window's statistics** (a
prediction interval rather than a plug-in one), so a monitor can judge a
series from its first `min_points` readings on at the rate it states.

- `zscore_p(z, n)`: the exact two-sided prediction-interval p-value
  (Hahn & Meeker 1991, "Statistical Intervals", sec. 4.6): for X_1..X_n and a
  new X i.i.d. N(mu, sigma^2), with the window's mean and sample std s (ddof 1),

      (X - mean) / (s * sqrt(1 + 1/n)) ~ t(n - 1),
      p = 2 * P(T_{n-1} >= |z| / sqrt(1 + 1/n)),   z = |X - mean| / s.

- `iqr_p(spread, n)`: the same for the robust pair, midhinge M = (Q1 + Q3)/2
  and IQR = Q3 - Q1 (numpy's "linear" quartiles). (X - M)/IQR is pivotal (its
  law depends on n only); it is approximated by a Student t:

      1.349 * |X - M| / (IQR * sqrt(1 + 1.238/n)) ~ t(nu),   nu = n / 2.72,

  from the quartiles' asymptotic (co)variances (Cramer 1946, sec. 28.5):
  Var(M) = 1.238 sigma^2 / n and Var(IQR / 1.349) = 1.36 sigma^2 / n for normal
  data, so IQR/1.349 estimates sigma with the precision of a sample std on
  n / (2 * 1.36) = n / 2.72 degrees of freedom. Checked by Monte Carlo
  (tests/test_detectors.py; 3 M draws at n = 30, 60, 150): the true tail
  probabilities at 1e-3, 1e-4 and 1e-5 are matched within +-15 % (at n = 30
  the approximation is conservative: 1.1e-4 and 1.5e-5 for 1e-4 and 1e-5).

Both assume normal, independent readings. Heavier tails of real data are the
job of the monitor's other p-value, the series' own score history
(`operators.detectors.tail`); the monitor takes the larger of the two, so a
reading must be improbable under both.

>>> from scipy import stats
>>> reference = float(2 * stats.t.sf(3.0 / (1 + 1 / 30) ** 0.5, 29))
>>> abs(zscore_p(3.0, 30) - reference) < 1e-12
True
>>> zscore_p(3.0, 30) > 2 * float(2 * stats.norm.sf(3.0))  # twice the plug-in 0.0027
True
>>> 1e-4 < iqr_p(2.73, 10_000) < 3e-4   # large n: |Z| > 2.73 * 1.349 = 3.68
True
>>> iqr_p(2.73, 30) > 10 * iqr_p(2.73, 10_000)  # 30 readings: a much weaker verdict
True
"""

from __future__ import annotations

import math

from scipy.special import stdtr

IQR_SIGMA = 1.349  # IQR of the standard normal: 2 * 0.6745
MIDHINGE_VAR = 1.238  # n * Var(midhinge) / sigma^2 for normal data, asymptotically
IQR_DOF_DIVISOR = 2.72  # 2 * n * Var(IQR / 1.349) / sigma^2, asymptotically


def zscore_p(z: float, n: int) -> float:
    """Two-sided prediction-interval p-value of |x - mean| / s = z against n readings."""
    if n < 2:
        raise ValueError("need n >= 2")
    t = abs(z) / math.sqrt(1.0 + 1.0 / n)
    return float(2.0 * stdtr(n - 1, -t))


def iqr_p(spread: float, n: int) -> float:
    """Two-sided p-value of |x - midhinge| / IQR = spread against n readings (t approx.)."""
    if n < 2:
        raise ValueError("need n >= 2")
    t = IQR_SIGMA * abs(spread) / math.sqrt(1.0 + MIDHINGE_VAR / n)
    return float(2.0 * stdtr(n / IQR_DOF_DIVISOR, -t))
