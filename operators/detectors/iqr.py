"""Tukey's fences on a window's quartiles, calibrated.

Tukey (1977, "Exploratory Data Analysis"): with the window's quartiles Q1, Q3
(numpy's "linear" quantile, Hyndman & Fan definition 7) and IQR = Q3 - Q1, a
reading x is anomalous when

    x > Q3 + k IQR   or   x < Q1 - k IQR        (k = 1.5 by Tukey's choice).

The score is the distance beyond the crossed fence in IQR units,
(x - (Q3 + k IQR)) / IQR resp. ((Q1 - k IQR) - x) / IQR, 0 inside the fences;
the fence reported is the crossed one (inside: the nearer side's, upper from the
midhinge up). A window whose IQR is not above `min_iqr` gives no verdict.

Calibration (issue 14), when the detector has a `tail`
(`operators.detectors.tail.TailProbability`): on the continuous spread
|x - (Q1 + Q3) / 2| / IQR (the distance from the midhinge in IQRs), a reading
beyond a fence is an anomaly only if p < alpha, p the larger of the series' tail
probability of the spread and the small-sample `iqr_p(spread, n)`
(`operators.detectors.interval`: a t(n / 2.72) approximation), because plain
fences on a 30-reading window are crossed far more often than their
large-sample rate (the IQR warm-up). A vetoed reading scores 0. Normal and vetoed
spreads are learnt into the tail, anomalies are not.

River-style: `score_one` is (score, fence) of x against the quartiles,
`learn_one(spread)` feeds the tail, `judge_one` is the per-reading verdict. The
window (its quartiles) is the caller's: no time, no rows, no episode here.

>>> fences = IqrFences(k=1.5)
>>> fences.score_one(20.0, 10.0, 12.0)   # upper fence 12 + 1.5 * 2 = 15: 2.5 IQRs beyond
(2.5, 15.0)
>>> fences.judge_one(11.0, 30, 10.0, 12.0, alpha=1e-3)  # (score, fence, p, anomalous)
(0.0, 15.0, None, False)
>>> fences.judge_one(5.0, 30, 10.0, 10.0, alpha=1e-3) is None   # IQR 0: no verdict
True
"""

from __future__ import annotations

from operators.detectors.interval import iqr_p
from operators.detectors.tail import TailProbability


class IqrFences:
    """The (calibrated) Tukey-fence verdict of one series; its only state is the tail."""

    __slots__ = ("k", "min_iqr", "tail")

    def __init__(
        self, k: float = 1.5, min_iqr: float = 1e-9, tail: TailProbability | None = None
    ) -> None:
        self.k = k
        self.min_iqr = min_iqr
        self.tail = tail  # None: uncalibrated (the plain fences)

    def score_one(self, x: float, q1: float, q3: float) -> tuple[float, float]:
        """(score, fence): x's distance beyond the crossed fence in IQRs (0 inside)
        and that fence (inside: the upper one from the midhinge up, else the lower)."""
        iqr = q3 - q1
        k = self.k
        upper, lower = q3 + k * iqr, q1 - k * iqr
        if x > upper:
            return (x - upper) / iqr, upper
        if x < lower:
            return (lower - x) / iqr, lower
        return 0.0, upper if x >= (q1 + q3) / 2 else lower

    def learn_one(self, spread: float) -> None:
        """Add a normal (or vetoed) spread |x - midhinge| / IQR to the series' tail."""
        if self.tail is not None:
            self.tail.learn_one(spread)

    def judge_one(
        self, x: float, n: int, q1: float, q3: float, alpha: float
    ) -> tuple[float, float, float | None, bool] | None:
        """(score, fence, p, anomalous) of reading x against the quartiles of n
        readings, learning its spread if normal; None when IQR <= min_iqr. A vetoed
        reading has score 0 and anomalous False (p says why)."""
        iqr = q3 - q1
        if iqr <= self.min_iqr:
            return None
        k = self.k
        upper, lower = q3 + k * iqr, q1 - k * iqr
        if x > upper:
            score, fence = (x - upper) / iqr, upper
        elif x < lower:
            score, fence = (lower - x) / iqr, lower
        else:
            score, fence = 0.0, upper if x >= (q1 + q3) / 2 else lower
        anomalous = score > 0.0
        tail = self.tail
        if tail is None:
            return score, fence, None, anomalous
        spread = abs(x - 0.5 * (q1 + q3)) / iqr
        if anomalous:
            p = tail.score_one(spread)
            q = iqr_p(spread, n)
            if p is None or q > p:
                p = q
            if p >= alpha:  # usual for this series: vetoed, and learnt
                tail.learn_one(spread)
                return 0.0, fence, p, False
            return score, fence, p, True
        tail.learn_one(spread)
        return score, fence, None, False
