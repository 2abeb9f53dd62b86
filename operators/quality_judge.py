"""Degradation of a model version against its reference: the evidence behind `quality` alerts.

The reference of a (model, version) is its first `reference_labelled` labelled
predictions, taken as whole final windows in event-time order (so any arrival
order gives the same reference): the reference profiles of `streamwatch
reference build` hold no labels, so the model's own first labelled traffic
is its baseline. Each later final window is judged against it:

- classification: the relative accuracy drop `1 - acc / acc_ref`, with the
  p-value of a one-sided Fisher exact test on the 2x2 table
  [[correct, wrong] of the window, [correct, wrong] of the reference]
  (Fisher 1922; `operators.stats.fisher_exact_less`): the probability, given
  the margins, of as few correct predictions in the window if both had the
  same accuracy;
- regression: the relative MAE increase `mae / mae_ref - 1`, with the p-value
  of Welch's one-sided t-test on the absolute errors (Welch 1947, "The
  generalization of Student's problem when several different population
  variances are involved", Biometrika 34; scipy.stats.ttest_ind_from_stats
  with equal_var=False): absolute errors of a window of more than a few dozen
  labels have a near-normal mean (central limit theorem), so no bootstrap is
  needed.

The tests count each labelled prediction once (weights enter the window's
metrics, not the tests, whose counts must be integers). The relative margin
(5 % warning, 10 % critical, seed 001) is the rule's threshold; the p-value
gates it (`max_p_value`, the false-alarm budget per window); the episode
resolves after `clear_windows` windows back within the margin (hysteresis).
The reference's confidence/correctness pairs also fit the CBPE calibration
map (`operators.quality_calibration`). A reference is a msgspec Struct: a typed
field of the quality operator's checkpointed state (`operators.state`).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

# scipy.stats is imported where it is used: at import it costs ~0.4 s of CPU in every
# process that reads the configuration (the CLI), most of which never call it
from operators.quality_calibration import CalibrationMap
from operators.stats import fisher_exact_less


class QualityReference(msgspec.Struct):
    """The reference of one (model, version): counts for the tests, pairs for calibration."""

    task: str = ""  # "classification" or "regression", from its first window
    n: int = 0  # labelled predictions
    n_correct: int = 0
    sum_abs: float = 0.0
    sum_abs_sq: float = 0.0
    windows: int = 0
    done: bool = False
    conf: list[float] = []  # CBPE pairs, only while building
    correct: list[int] = []
    calibration: CalibrationMap | None = None

    def add(
        self,
        task: str,
        correct: np.ndarray | None,
        abs_errors: np.ndarray | None,
        conf: np.ndarray | None,
        target: int,
    ) -> None:
        """Absorb one final window; complete the reference once `target` labels are in."""
        if self.done or not task:
            return
        if self.task and task != self.task:
            return  # a window that reads as the other kind of model: not a reference
        self.task = task
        self.windows += 1
        if task == "classification" and correct is not None:
            self.n += len(correct)
            self.n_correct += int(correct.sum())
            if conf is not None:
                self.conf.extend(conf.tolist())
                self.correct.extend(correct.astype(int).tolist())
        elif abs_errors is not None:
            self.n += len(abs_errors)
            self.sum_abs += float(abs_errors.sum())
            self.sum_abs_sq += float((abs_errors * abs_errors).sum())
        if self.n >= target:
            self.done = True
            if self.conf and len(self.conf) == len(self.correct):
                self.calibration = CalibrationMap.fit(self.conf, self.correct)
            self.conf, self.correct = [], []

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else math.nan

    @property
    def mae(self) -> float:
        return self.sum_abs / self.n if self.n else math.nan

    @property
    def abs_error_std(self) -> float:
        if self.n < 2:
            return 0.0
        var = (self.sum_abs_sq - self.n * self.mae**2) / (self.n - 1)
        return math.sqrt(max(var, 0.0))


def accuracy_drop(correct: int, n: int, ref_correct: int, ref_n: int) -> tuple[float, float]:
    """(relative drop 1 - acc / acc_ref, one-sided Fisher p-value of a lower accuracy).

    >>> drop, p = accuracy_drop(60, 100, 450, 500)
    >>> round(drop, 3), p < 1e-8
    (0.333, True)
    """
    acc, ref = correct / n, ref_correct / ref_n
    drop = 1.0 - acc / ref if ref > 0 else 0.0
    p = float(fisher_exact_less(correct, n - correct, ref_correct, ref_n - ref_correct))
    return drop, p


def mae_increase(
    mean_abs: float, std_abs: float, n: int, ref_mean: float, ref_std: float, ref_n: int
) -> tuple[float, float]:
    """(relative increase mae / mae_ref - 1, Welch's one-sided p-value of a larger MAE).

    >>> inc, p = mae_increase(1.5, 1.0, 200, 1.0, 0.8, 500)
    >>> round(inc, 2), p < 1e-7
    (0.5, True)
    """
    increase = mean_abs / ref_mean - 1.0 if ref_mean > 0 else 0.0
    if n < 2 or ref_n < 2 or (std_abs == 0 and ref_std == 0):
        p = 0.0 if mean_abs > ref_mean else 1.0
        return increase, p
    from scipy import stats

    result = stats.ttest_ind_from_stats(
        mean_abs, std_abs, n, ref_mean, ref_std, ref_n, equal_var=False, alternative="greater"
    )
    return increase, float(result.pvalue)


__all__ = ["QualityReference", "accuracy_drop", "mae_increase"]
