"""Always-valid p-values for a difference of means: the mixture SPRT (mSPRT).

Johari, R., Koomen, P., Pekelis, L. & Walsh, D. (2017), "Peeking at A/B Tests:
Why it matters, and what to do about it", KDD 2017, 1517-1525; Johari,
Pekelis & Walsh (2015), "Always Valid Inference: Bringing Sequential Analysis
to A/B Testing", arXiv:1512.04922, section 4 (the normal mixture).

Two arms, treatment T and control C; theta = mu_T - mu_C. After n_T and n_C
observations, with the difference of the sample means Delta = mean_T - mean_C
and its variance V = s_T^2 / n_T + s_C^2 / n_C (the normal approximation both
papers use for two-sample tests, with the variances estimated), the mixture
likelihood ratio of H1: theta ~ N(theta0, tau^2) against H0: theta = theta0 is

    Lambda = sqrt(V / (V + tau^2)) * exp( tau^2 (Delta - theta0)^2 / (2 V (V + tau^2)) )

and the always-valid p-value is p_n = min(p_{n-1}, 1 / Lambda_n), p_0 = 1.
Under H0, P(exists n: p_n <= alpha) <= alpha (Ville's inequality on the
mixture martingale): the test may be looked at after every window without the
false-alarm rate growing past alpha, unlike a fixed-sample test repeated.

tau^2 is the mixing variance: the effect sizes the test is most sensitive to
are around tau (Johari et al. 2017 choose it from past experiments).

>>> round(mixture_lr(delta=0.02, variance=1e-4, tau2=1e-4), 4)  # sqrt(1/2) * e^1
1.9221
>>> round(1 / mixture_lr(delta=0.0, variance=1e-4, tau2=1e-4), 4)  # no difference: 1/sqrt(1/2)
1.4142
"""

from __future__ import annotations

import math

import msgspec


def mixture_lr(delta: float, variance: float, tau2: float, theta0: float = 0.0) -> float:
    """Lambda of the normal-mixture SPRT (Johari, Pekelis & Walsh 2015, eq. 11)."""
    if variance <= 0 or tau2 <= 0:
        raise ValueError("variance and tau2 must be > 0")
    exponent = tau2 * (delta - theta0) ** 2 / (2 * variance * (variance + tau2))
    # the exponent can be huge for an overwhelming difference: cap it, p is 0 then anyway
    return math.sqrt(variance / (variance + tau2)) * math.exp(min(exponent, 700.0))


def always_valid_p(previous: float, delta: float, variance: float, tau2: float) -> float:
    """p_n = min(p_{n-1}, 1 / Lambda_n), in [0, 1].

    >>> p = always_valid_p(1.0, delta=0.0, variance=1e-4, tau2=1e-4)
    >>> p  # Lambda < 1 with no difference: p stays 1
    1.0
    """
    return min(previous, 1.0 / mixture_lr(delta, variance, tau2), 1.0)


class Moments(msgspec.Struct, gc=False):
    """Count, sum and sum of squares of a stream: its mean and sample variance. A
    msgspec Struct: a typed field of its owner's checkpoint (`operators.state`).

    >>> m = Moments()
    >>> for x in (1.0, 2.0, 4.0):
    ...     m.add(x)
    >>> m, round(m.mean, 4), round(m.variance, 4)
    (Moments(n=3, s1=7.0, s2=21.0), 2.3333, 2.3333)
    """

    n: int = 0
    s1: float = 0.0
    s2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.s1 += x
        self.s2 += x * x

    @property
    def mean(self) -> float:
        return self.s1 / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 below two values."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.s2 - self.s1 * self.s1 / self.n) / (self.n - 1))


def difference(treatment: Moments, control: Moments) -> tuple[float, float] | None:
    """(Delta, V) of two arms, or None while either has fewer than two values or V is 0."""
    if treatment.n < 2 or control.n < 2:
        return None
    variance = treatment.variance / treatment.n + control.variance / control.n
    if variance <= 0:
        return None
    return treatment.mean - control.mean, variance
