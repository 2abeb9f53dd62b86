"""The z-score of a reading against a window's mean and standard deviation, calibrated.

For a reading x and a window of n readings with mean m and sample standard
deviation s (ddof = 1), the standard score is

    z = |x - m| / s,

anomalous when z > `threshold` (3 is the "three-sigma rule": for a normal
distribution P(|Z| > 3) = 0.27 %). A window whose s is not above `min_std`
(e.g. a constant one) gives no z-score: no verdict.

Calibration (issue 14), when the detector has a `tail`
(`operators.detectors.tail.TailProbability`, the series' own recent normal
z-scores): a z beyond the threshold is an anomaly only if it is also improbable,
p < alpha, with p the larger of

- the series' tail probability of z (peaks over threshold, SPOT), and
- the small-sample prediction-interval p-value `zscore_p(z, n)`
  (Hahn & Meeker 1991, sec. 4.6: (X - m) / (s sqrt(1 + 1/n)) ~ t(n - 1);
  `operators.detectors.interval`), so a young window's noisy m and s cannot
  make a normal reading improbable.

A reading beyond the threshold with p >= alpha is *vetoed* (usual for this
series). Normal and vetoed z-scores are learnt into the tail; anomalies stay out
of it, so an anomalous stretch cannot calibrate itself away.

River-style: `score_one(x, n, mean, std)` is z, `p_one(z, n)` its calibrated
p-value, `learn_one(z)` adds a normal score to the tail; `judge_one` is the
three together as a monitor uses them once per reading. The window itself
(its mean and std) is the caller's: no time, no rows, no episode here.

>>> zs = ZScore(threshold=3.0)
>>> round(zs.score_one(14.0, 30, 10.0, 1.0), 6)
4.0
>>> zs.judge_one(14.0, 30, 10.0, 1.0, alpha=1e-3)  # (z, p, anomalous, vetoed)
(4.0, None, True, False)
>>> zs.judge_one(10.0, 30, 10.0, 0.0, alpha=1e-3) is None  # a constant window
True

With calibration, 4 sigma against only 5 readings is not improbable enough:
t(4) puts p = 0.02 on it, so the reading is vetoed and its score is learnt.

>>> from operators.detectors.tail import TailProbability
>>> cal = ZScore(threshold=3.0, tail=TailProbability(history=100, min_history=10))
>>> z, p, anomalous, vetoed = cal.judge_one(14.0, 5, 10.0, 1.0, alpha=1e-3)
>>> round(p, 3), anomalous, vetoed, len(cal.tail)
(0.022, False, True, 1)
"""

from __future__ import annotations

from operators.detectors.interval import zscore_p
from operators.detectors.tail import TailProbability


class ZScore:
    """The (calibrated) z-score verdict of one series; its only state is the tail."""

    __slots__ = ("min_std", "tail", "threshold")

    def __init__(
        self, threshold: float = 3.0, min_std: float = 1e-9, tail: TailProbability | None = None
    ) -> None:
        self.threshold = threshold
        self.min_std = min_std
        self.tail = tail  # None: uncalibrated (the plain z line)

    def score_one(self, x: float, n: int, mean: float, std: float) -> float | None:
        """z = |x - mean| / std, or None when std <= min_std (no verdict)."""
        if std <= self.min_std:
            return None
        return abs(x - mean) / std

    def p_one(self, z: float, n: int) -> float | None:
        """The calibrated p-value of z against n readings: the larger of the tail's
        and the small-sample one (None without a tail)."""
        if self.tail is None:
            return None
        p, q = self.tail.score_one(z), zscore_p(z, n)
        return q if p is None or q > p else p

    def learn_one(self, z: float) -> None:
        """Add a normal (or vetoed) z-score to the series' tail."""
        if self.tail is not None:
            self.tail.learn_one(z)

    def judge_one(
        self, x: float, n: int, mean: float, std: float, alpha: float
    ) -> tuple[float, float | None, bool, bool] | None:
        """(z, p, anomalous, vetoed) of reading x, learning its score if normal; None
        when the window's std is not above min_std. p is computed only where it can
        change the verdict (z beyond the threshold), and only with a tail."""
        if std <= self.min_std:
            return None
        z = abs(x - mean) / std
        anomalous = z > self.threshold
        tail = self.tail
        if tail is None:
            return z, None, anomalous, False
        p = None
        if anomalous:
            p = tail.score_one(z)
            q = zscore_p(z, n)
            if p is None or q > p:
                p = q
            if p >= alpha:  # usual for this series: vetoed, and learnt
                tail.learn_one(z)
                return z, p, False, True
            return z, p, True, False
        tail.learn_one(z)
        return z, None, False, False
