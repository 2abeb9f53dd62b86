"""Distribution-shift statistics, vectorised with numpy.

Every function is pure and deterministic. Binning convention (shared by the
reference profile and the drift operator): `quantile_edges` returns the
*interior* cut points c_1 < ... < c_k of a sample, and the k + 1 bins are

    (-inf, c_1), [c_1, c_2), ..., [c_k, +inf)

so every value, however far outside the reference range, falls in a bin
(`binned_counts`). Proportions below `eps` are clipped for PSI only.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

# scipy.stats is imported where it is used: at import it costs ~0.4 s of CPU in every
# process that reads the configuration (the CLI), most of which never call it

PSI_EPS = 1e-4


def quantile_edges(sample: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Unique interior cut points splitting `sample` into `bins` quantile bins.

    c_j = Q(j / bins) for j = 1 .. bins - 1, with Q numpy's default "linear"
    sample quantile (Hyndman & Fan 1996, definition 7). Repeated cut points
    (a sample with heavy ties) are merged, so there may be fewer than `bins`
    bins; a constant sample gives one cut point (two bins).
    """
    values = np.asarray(sample, dtype=np.float64)
    if values.size == 0:
        raise ValueError("quantile_edges of an empty sample")
    if bins < 2:
        raise ValueError("bins must be at least 2")
    probs = np.arange(1, bins) / bins
    return np.unique(np.quantile(values, probs))


def binned_counts(values: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """Counts of `values` in the len(edges) + 1 bins (-inf, c_1), [c_1, c_2), .., [c_k, inf).

    The bin of x is the number of cut points <= x, i.e.
    numpy.searchsorted(edges, x, side="right").
    """
    cuts = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(cuts, np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(idx, minlength=cuts.size + 1).astype(np.int64)


def _proportions(counts: ArrayLike) -> NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("counts must have a positive total")
    return c / total


def psi(expected_counts: ArrayLike, actual_counts: ArrayLike, eps: float = PSI_EPS) -> float:
    """Population Stability Index of `actual` against `expected` (same bins).

        e_i = max(E_i / sum E, eps),  a_i = max(A_i / sum A, eps)
        PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

    Source: Yurdakul, B. (2018), "Statistical Properties of Population
    Stability Index", PhD dissertation, Western Michigan University; Siddiqi,
    N. (2006), "Credit Risk Scorecards", Wiley. The clip at `eps` (no
    renormalisation) is the usual industry guard against an empty bin making
    the logarithm infinite. Every term is >= 0 (a - e and ln(a/e) share a
    sign), so PSI >= 0, with 0 exactly when the proportions agree. Bands
    (contract): < 0.1 none, 0.1-0.2 moderate, >= 0.2 significant.
    Works along the last axis; returns a float for 1-d input.
    """
    e = np.maximum(_proportions(expected_counts), eps)
    a = np.maximum(_proportions(actual_counts), eps)
    out = np.sum((a - e) * np.log(a / e), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def js_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon divergence of two count (or probability) vectors, base 2.

        P = p / sum p,  Q = q / sum q,  M = (P + Q) / 2
        JS = 1/2 KL(P || M) + 1/2 KL(Q || M),  KL(X || M) = sum x_i log2(x_i / m_i)

    with 0 log 0 = 0 (no clipping needed: m_i > 0 wherever x_i > 0).
    Source: Lin, J. (1991), "Divergence measures based on the Shannon
    entropy", IEEE Trans. Inf. Theory 37(1):145-151. Symmetric, in [0, 1];
    equals scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2.
    Works along the last axis; returns a float for 1-d input.
    """
    pp = _proportions(p)
    qq = _proportions(q)
    m = 0.5 * (pp + qq)
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(pp > 0, pp * np.log2(pp / m), 0.0)
        kq = np.where(qq > 0, qq * np.log2(qq / m), 0.0)
    out = np.clip(0.5 * kp.sum(axis=-1) + 0.5 * kq.sum(axis=-1), 0.0, 1.0)
    return float(out) if np.ndim(out) == 0 else out


def ks_2samp_from_sorted(
    reference_sorted: ArrayLike, sample_sorted: ArrayLike
) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value (two-sided).

        D = sup_x |F_ref(x) - F_sample(x)|

    evaluated at every data point with searchsorted(side="right") (exact with
    ties), and p = 1 - K_en(D) with K the distribution of the one-sample KS
    statistic (scipy.stats.kstwo) at en = round(m n / (m + n)) -- Smirnov's
    asymptotic method, the same as scipy.stats.ks_2samp(method="asymp")
    (Hodges, J. L. (1958), "The significance probability of the Smirnov
    two-sample test", Arkiv for Matematik 3:469-486). Both inputs must
    already be sorted ascending; the reference is sorted once, in its profile,
    so a window costs one searchsorted pass. The asymptotic p-value (not
    scipy's O(m n) exact one) keeps a window's cost bounded.
    """
    ref = np.asarray(reference_sorted, dtype=np.float64)
    cur = np.asarray(sample_sorted, dtype=np.float64)
    n1, n2 = ref.size, cur.size
    if n1 == 0 or n2 == 0:
        raise ValueError("ks_2samp_from_sorted needs two non-empty samples")
    data_all = np.concatenate([ref, cur])
    cdf1 = np.searchsorted(ref, data_all, side="right") / n1
    cdf2 = np.searchsorted(cur, data_all, side="right") / n2
    d = float(np.max(np.abs(cdf1 - cdf2)))
    return d, ks_2samp_pvalue(d, n1, n2)


def ks_2samp_pvalue(d: float, n1: int, n2: int) -> float:
    """The asymptotic p-value of a two-sample KS statistic `d` of samples of sizes n1
    and n2 (see `ks_2samp_from_sorted`)."""
    m, n = max(n1, n2), min(n1, n2)
    en = m * n / (m + n)
    from scipy import stats

    return float(np.clip(stats.kstwo.sf(d, np.round(en)), 0.0, 1.0))


def chi_square(
    expected_props: ArrayLike, actual_counts: ArrayLike, eps: float = PSI_EPS
) -> tuple[float, float]:
    """Pearson's chi-square goodness-of-fit of observed counts to reference proportions.

        n = sum O_i,  p_i = max(P_i, eps) / sum_j max(P_j, eps),  E_i = n p_i
        chi2 = sum_i (O_i - E_i)^2 / E_i,  df = k - 1,  p = P(X^2_df >= chi2)

    computed by scipy.stats.chisquare(O, f_exp=E) (Pearson, K. (1900),
    Philosophical Magazine 50(302):157-175). Zero-expected bins (a category
    or "other" never seen in the reference) are floored at `eps` and the
    proportions renormalised -- a pseudo-count, so a category new to the
    reference yields a large but finite statistic instead of infinity or a
    division by zero; nothing is merged, so each category keeps its bin. With
    one bin (k = 1) there is nothing to test: (0.0, 1.0).
    """
    props = np.maximum(np.asarray(expected_props, dtype=np.float64), eps)
    props = props / props.sum()
    observed = np.asarray(actual_counts, dtype=np.float64)
    n = observed.sum()
    if n <= 0:
        raise ValueError("chi_square needs a positive total count")
    if observed.size < 2:
        return 0.0, 1.0
    from scipy import stats

    result = stats.chisquare(observed, f_exp=props * n)
    return float(result.statistic), float(result.pvalue)


def fisher_exact_less(
    a: ArrayLike, b: ArrayLike, c: ArrayLike, d: ArrayLike
) -> NDArray[np.float64]:
    """One-sided ("less") p-values of Fisher's exact test for many 2x2 tables [[a, b], [c, d]].

        p = P(X <= a),  X ~ Hypergeometric(M = a + b + c + d, n = a + b, N = a + c)

    the probability, given the table's margins, of a top-left count this low
    (Fisher 1922, "On the interpretation of chi-square from contingency
    tables"); p = 1 where a row or a column sums to 0. This is
    scipy.stats.fisher_exact's 2x2 path for alternative="less", element for
    element, in one vectorised `hypergeom.cdf` call instead of one call per
    table (BENCHMARKS.md, "Measurements behind design choices").
    """
    a, b, c, d = (np.asarray(x, dtype=np.int64) for x in (a, b, c, d))
    n1, n2, n = a + b, c + d, a + c
    p = np.ones(a.shape, dtype=np.float64)
    ok = (n1 > 0) & (n2 > 0) & (n > 0) & (b + d > 0)
    if ok.any():
        from scipy import stats

        p[ok] = np.minimum(stats.hypergeom.cdf(a[ok], (n1 + n2)[ok], n1[ok], n[ok]), 1.0)
    return p


def psi_test(expected_counts: ArrayLike, actual_counts: ArrayLike) -> tuple[float, int]:
    """p-value of a window's PSI under "no drift", given both sample sizes.

    Under no drift, with m reference and n window values in the same k bins,
    the PSI is the symmetrised Kullback-Leibler divergence
    sum_i (a_i - e_i) ln(a_i / e_i), whose second-order expansion is
    sum_i (a_i - e_i)^2 / e_i; each a_i - e_i has variance about
    p_i (1 - p_i) (1/n + 1/m), so

        PSI / (1/n + 1/m)  ~  X^2  ~  chi2(k - 1)     (large n and m)

    (Yurdakul, B. & Naranjo, J. (2020), "Statistical properties of the
    population stability index", Journal of Risk Model Validation 14(4);
    Yurdakul 2018, ch. 3). The PSI itself is unusable in that formula for a
    small window: an empty bin is clipped at `eps` and alone adds
    e_i ln(e_i / eps) (0.69 for a 10 % bin), so the statistic computed here is
    X^2, Pearson's chi-square test of homogeneity of the 2 x k table
    [reference counts; window counts] -- the quadratic form the PSI
    approximates, finite with empty bins, with the same chi2(k - 1) null
    (Pearson 1900; scipy.stats.chi2_contingency without continuity
    correction). Bins empty in both samples are dropped (k counts the rest).
    Returns (p-value, degrees of freedom); (1.0, 0) when fewer than two bins
    are occupied.

    >>> p, df = psi_test([100, 100, 100, 100], [25, 25, 25, 25])
    >>> (round(p, 6), df)
    (1.0, 3)
    >>> from scipy.stats import chi2_contingency
    >>> t = [[120, 80, 100, 100], [10, 40, 30, 20]]
    >>> bool(abs(psi_test(*t)[0] - chi2_contingency(t, correction=False).pvalue) < 1e-12)
    True
    """
    ref = np.asarray(expected_counts, dtype=np.float64)
    cur = np.asarray(actual_counts, dtype=np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    k = int(ref.size)
    m, n = ref.sum(), cur.sum()
    if k < 2 or m <= 0 or n <= 0:
        return 1.0, 0
    col = ref + cur
    total = m + n
    exp_ref = col * (m / total)
    exp_cur = col * (n / total)
    x2 = float(np.sum((ref - exp_ref) ** 2 / exp_ref) + np.sum((cur - exp_cur) ** 2 / exp_cur))
    return chi2_sf(x2, k - 1), k - 1


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi2(df): scipy.stats.chi2.sf(x, df).

    For x > 0 finite and df >= 1 that is scipy.special.chdtrc(df, x), the function
    chi2.sf calls there after its argument checks (scipy.stats' `chi2_gen._sf`):
    called directly, the same float without ~75 µs of checks (issue 18: several
    calls per feature of each drift window). Anything else goes through chi2.sf."""
    if df >= 1 and 0.0 < x < math.inf:
        from scipy import special

        return float(special.chdtrc(df, x))
    from scipy import stats

    return float(stats.chi2.sf(x, df))


def chi2_isf(q: float, df: int) -> float:
    """The x with P(X >= x) = q for X ~ chi2(df): scipy.stats.chi2.isf(q, df); for
    0 < q < 1 and df >= 1 scipy.special.chdtri(df, q) directly (as `chi2_sf`)."""
    if df >= 1 and 0.0 < q < 1.0:
        from scipy import special

        return float(special.chdtri(df, q))
    from scipy import stats

    return float(stats.chi2.isf(q, df))


def psi_critical(n: int, m: float, bins: int, alpha: float) -> float:
    """The PSI that chance alone exceeds with probability `alpha` (no drift).

        PSI_crit = (1/n + 1/m) * chi2_{1 - alpha}(k - 1)

    from the null law PSI ~ (1/n + 1/m) chi2(k - 1) (Yurdakul & Naranjo 2020;
    see `psi_test`); m = inf for a known reference. It shows how biased a
    small window's PSI is: with 10 bins, alpha = 0.01 and a reference of
    1000, a window of 50 reaches PSI 0.46 by chance, one of 1000 only 0.04.

    >>> round(psi_critical(50, 1000, 10, 0.01), 3)
    0.455
    >>> round(psi_critical(1000, float("inf"), 10, 0.01), 4)
    0.0217
    """
    return float((1.0 / n + 1.0 / m) * chi2_isf(alpha, bins - 1))


def binomial_sf_test(successes: int, trials: int, rate: float) -> float:
    """Exact one-sided binomial p-value: P(X >= successes), X ~ Binomial(trials, rate).

    The chance of at least this many events (errors, low-confidence
    predictions) in `trials` if the true rate were `rate`: small values are
    evidence that the true rate exceeds `rate` (Clopper, C. J. & Pearson,
    E. S. (1934), Biometrika 26(4):404-413; scipy.stats.binomtest(...,
    alternative="greater") gives the same). 1.0 for no successes.

    >>> round(binomial_sf_test(3, 10, 0.1), 6)  # 1 - P(X <= 2) = 0.0701908
    0.070191
    >>> binomial_sf_test(0, 10, 0.1)
    1.0
    """
    if successes <= 0 or trials <= 0:
        return 1.0
    from scipy import stats

    return float(min(1.0, stats.binom.sf(successes - 1, trials, rate)))


def alpha_for_budget(false_alarms_per_1000_days: float, judgements_per_day: float) -> float:
    """Per-judgement significance level that holds a false-alarm budget per entity.

    With J independent judgements per entity and day, each at level alpha,
    the chance of at least one false alarm in a quiet entity-day is
    1 - (1 - alpha)^J; setting it to B / 1000 (B false alarms per 1,000
    entity-days) gives Sidak's correction

        alpha = 1 - (1 - B / 1000)^(1 / J)

    (Sidak, Z. (1967), JASA 62(318):626-633), about B / (1000 J)
    (Bonferroni). Alarms per entity are at most one per quiet day on
    average at this level, so the budget also bounds alerts per 1,000
    entity-days from above.

    >>> f"{alpha_for_budget(1, 1440):.3g}"
    '6.95e-07'
    >>> f"{alpha_for_budget(1, 288):.3g}"
    '3.47e-06'
    """
    if not 0 < false_alarms_per_1000_days < 1000 or judgements_per_day < 1:
        raise ValueError("budget must be in (0, 1000) and judgements_per_day >= 1")
    b = false_alarms_per_1000_days / 1000.0
    return float(-np.expm1(np.log1p(-b) / judgements_per_day))


def systematic_sample(sorted_values: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    """At most `size` evenly spaced order statistics of an ascending array.

    index_j = round(j (n - 1) / (size - 1)), j = 0 .. size - 1: a quantile
    sketch that depends only on the multiset of values (not their order), so
    it is deterministic; its empirical CDF is within 1/size of the full one.
    """
    n = sorted_values.size
    if n <= size:
        return sorted_values
    if size < 2:
        return sorted_values[n // 2 : n // 2 + 1]
    idx = np.rint(np.linspace(0, n - 1, size)).astype(np.int64)
    return sorted_values[idx]


__all__ = [
    "PSI_EPS",
    "alpha_for_budget",
    "binned_counts",
    "binomial_sf_test",
    "chi2_isf",
    "chi2_sf",
    "chi_square",
    "fisher_exact_less",
    "js_divergence",
    "ks_2samp_from_sorted",
    "ks_2samp_pvalue",
    "psi",
    "psi_critical",
    "psi_test",
    "quantile_edges",
    "systematic_sample",
]
