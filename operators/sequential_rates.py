"""Accumulated evidence for a rate: Page's CUSUM of the binomial log-likelihood ratio.

A small entity (20 requests a minute) whose error rate jumps from 0.5 % to
6 % shows one error a window: no single window is evidence, ten of them are.
Per entity, after each window with x events of n trials,

    llr(x, n) = x ln(p1 / p0) + (n - x) ln((1 - p1) / (1 - p0))
    S_t = max(0, S_{t-1} + llr(x_t, n_t))                  (Page 1954)

with p0 the rate at the rule's line and p1 the rate to detect quickly. S_t
is the largest log-likelihood ratio of "rate p1 since some window j" against
"rate p0", over every j <= t. Under p0 the likelihood ratio read backwards
from t is a nonnegative martingale with mean 1, so by Ville's inequality

    P(S_t >= h) <= exp(-h)     for every t, i.e.  p_t = exp(-S_t)

is a valid p-value at each judgement (and at a true rate below p0 the
chance is smaller still): the per-window false-alarm budget applies to it
unchanged, however many windows the evidence spans (Page, E. S. (1954),
"Continuous inspection schemes", Biometrika 41(1/2):100-115; Lorden, G.
(1971), "Procedures for reacting to a change in distribution", Ann. Math.
Statist. 42(6):1897-1908, ARL0 >= exp(h); Ville, J. (1939), "Etude critique
de la notion de collectif").

`cap` bounds S (S_t = min(cap, ...)): evidence beyond it (20 nats is
p = 2e-9) is not kept, so once an incident ends S falls back under a
budget's line (about 14.5 nats for 1 false alert per 1,000 days of
one-minute windows) within a few windows instead of hours; a capped S is
never larger, so its p-value stays valid.

The detector is pure state per key (a float, dropped at 0): no time, no
rows, no alert state; the operator decides when to update it (once per
closed window, in window order, so the result does not depend on arrival
order).

>>> c = BinomialCusum(0.01, 0.05)
>>> round(c.update("m", 1, 20), 3)  # one error in 20: 1.609 - 19 * 0.0412
0.826
>>> [round(c.update("m", 1, 20), 2) for _ in range(4)]
[1.65, 2.48, 3.3, 4.13]
>>> c.update("m", 0, 200), c.state  # a clean window of 200 brings it back to 0
(0.0, {})
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

# the LLR itself is CTR's, the recursion Cusum's (one of each for every CUSUM)
from operators.sequential import binomial_llr, cusum_update

K = TypeVar("K", bound=Hashable)


def cusum_step(s: float, x: int, n: int, p0: float, p1: float, cap: float = math.inf) -> float:
    """One step of the CUSUM: min(cap, max(0, s + llr(x, n))).

    >>> cusum_step(0.0, 0, 100, 0.5, 0.55)  # no evidence for p1: stays at 0
    0.0
    """
    return cusum_update(s, float(binomial_llr(x, n, p0, p1)), cap)


class BinomialCusum(Generic[K]):
    """Page's CUSUM of the binomial LLR of p1 against p0, one statistic per key:
    the increments x ln(p1 / p0) + (n - x) ln((1 - p1) / (1 - p0)) stepped with
    operators.sequential.cusum_update, `Cusum`'s recursion.

    p1 > p0 watches for a rise of the rate, p1 < p0 for a fall. A key is any
    hashable (a composite one is a tuple, e.g. (model_id, model_version)). The
    state is `state`, key -> S: an owner keeps that dict as a typed field of its
    own state (`operators.state`) and sets it back on restore."""

    def __init__(self, p0: float, p1: float, cap: float = math.inf) -> None:
        if not (0 < p0 < 1 and 0 < p1 < 1 and p0 != p1) or cap <= 0:
            raise ValueError("BinomialCusum needs p0 != p1 in (0, 1) and cap > 0")
        self.p0, self.p1, self.cap = p0, p1, cap
        self.up = math.log(p1 / p0)
        self.down = math.log((1.0 - p1) / (1.0 - p0))
        self.state: dict[K, float] = {}  # key -> S (absent: 0)

    def update(self, key: K, x: int, n: int) -> float:
        """Fold one window's x events of n trials into the key's statistic; return S."""
        s = cusum_update(self.state.get(key, 0.0), x * self.up + (n - x) * self.down, self.cap)
        if s > 0.0:
            self.state[key] = s
        else:
            self.state.pop(key, None)
        return s

    @staticmethod
    def p_value(s: float) -> float:
        """exp(-S): P(S_t >= S) <= exp(-S) under p0 at every t (Ville's inequality)."""
        return math.exp(-s)

    def snapshot(self) -> dict[K, float]:
        """A copy of `state` (for a standalone detector; operators keep `state` itself
        as a field of their typed state)."""
        return dict(self.state)

    def restore(self, state: dict[K, float]) -> None:
        self.state = {k: float(v) for k, v in state.items()}


__all__ = ["BinomialCusum", "binomial_llr", "cusum_step"]
