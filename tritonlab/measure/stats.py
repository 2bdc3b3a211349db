"""Statistics of timing samples: median, IQR, a bootstrap confidence interval of the median,
the rule that decides when a point has been measured enough, and the CI of a speedup.

The median (not the mean) is the statistic: timing noise is one-sided (preemption, clock
dips, a cache miss only ever add time), so a few slow outliers move the mean but not the
median. The bootstrap makes no assumption about the shape of the distribution, which is
often skewed or bimodal for GPU timings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
# The fewest samples any measurement gets, whatever its time budget.
FLOOR_SAMPLES = 3
# Bootstrap resamples are drawn in chunks so that memory stays near this many elements,
# whatever the number of samples.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class Summary:
    """What the harness reports about a list of samples (all in the samples' unit).

    ``ci`` is the bootstrap ``confidence`` interval of the median (None below 2 samples);
    ``rel_ci`` its larger half-width relative to the median (inf when there is no CI): the
    true median lies within ``median * (1 +- rel_ci)`` at that confidence.
    """

    n: int
    median: float
    q1: float
    q3: float
    iqr: float
    mean: float
    std: float
    min: float
    max: float
    ci: tuple[float, float] | None
    rel_ci: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d


def _as_array(samples: Sequence[float]) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("need a non-empty 1-D sequence of samples")
    if not np.isfinite(x).all():
        raise ValueError("samples must be finite")
    return x


def bootstrap_medians(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``resamples`` resamples (with replacement, same size) of ``x``."""
    n = x.size
    out = np.empty(resamples)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.median(x[idx], axis=1)
    return out


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE,
              resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap ``confidence`` interval of the median; None below 2 samples.

    Seeded, so the same samples always give the same interval.
    """
    x = _as_array(samples)
    if x.size < 2:
        return None
    meds = bootstrap_medians(x, resamples, np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(meds, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def relative_halfwidth(median: float, ci: tuple[float, float] | None) -> float:
    if ci is None or median <= 0:
        return math.inf
    return max(median - ci[0], ci[1] - median) / median


def summarize(samples: Sequence[float], confidence: float = CONFIDENCE,
              resamples: int = RESAMPLES, seed: int = 0) -> Summary:
    """Median, quartiles (linear interpolation), IQR, mean, std and the median's CI."""
    x = _as_array(samples)
    q1, med, q3 = (float(v) for v in np.quantile(x, [0.25, 0.5, 0.75]))
    ci = median_ci(x, confidence, resamples, seed)
    return Summary(n=int(x.size), median=med, q1=q1, q3=q3, iqr=q3 - q1,
                   mean=float(x.mean()), std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                   min=float(x.min()), max=float(x.max()), ci=ci,
                   rel_ci=relative_halfwidth(med, ci))


@dataclass(frozen=True)
class StopRule:
    """When to stop repeating a measurement.

    Stop with reason ``"ci"`` once there are at least ``min_samples`` and the CI of the
    median is within ``rel_ci`` of it (1%: the true median is within +-1% at 95%
    confidence); with ``"budget"`` when ``budget_s`` seconds of measuring have elapsed; with
    ``"max_samples"`` at ``max_samples``. The budget never stops a measurement below
    :data:`FLOOR_SAMPLES` samples, so every measurement has a median and a CI. The CI is
    re-evaluated only each time the sample count has grown by ``growth`` (a bootstrap costs
    O(resamples x n)), so checking is cheap however many samples a fast kernel produces.
    """

    rel_ci: float = 0.01
    budget_s: float = 1.0
    min_samples: int = 10
    max_samples: int = 5000
    growth: float = 1.25
    resamples: int = 500

    def __post_init__(self) -> None:
        if not (self.rel_ci > 0 and self.budget_s > 0 and self.min_samples >= 2
                and self.max_samples >= self.min_samples and self.growth > 1):
            raise ValueError(f"invalid stop rule {self}")


class StopTracker:
    """Applies a :class:`StopRule` to a growing list of samples."""

    def __init__(self, rule: StopRule):
        self.rule = rule
        self._next_check = rule.min_samples
        self.last_rel_ci = math.inf

    def converged(self, samples: Sequence[float]) -> bool:
        """True once the CI rule holds (evaluated on the growth schedule)."""
        n = len(samples)
        if n < self._next_check:
            return False
        self._next_check = max(n + 1, math.ceil(n * self.rule.growth))
        x = _as_array(samples)
        ci = median_ci(x, resamples=self.rule.resamples)
        self.last_rel_ci = relative_halfwidth(float(np.median(x)), ci)
        return self.last_rel_ci <= self.rule.rel_ci

    def reason(self, samples: Sequence[float], elapsed_s: float) -> str | None:
        """The reason to stop now, or None to go on."""
        if len(samples) >= self.rule.max_samples:
            return "max_samples"
        if self.converged(samples):
            return "ci"
        if elapsed_s >= self.rule.budget_s and len(samples) >= FLOOR_SAMPLES:
            return "budget"
        return None


def ratio_of_medians_ci(numerator: Sequence[float], denominator: Sequence[float],
                        confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                        seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap CI of median(numerator) / median(denominator), resampling the two sample
    sets independently (they come from separate runs). None if either has < 2 samples or a
    resampled median of the denominator is 0."""
    a, b = _as_array(numerator), _as_array(denominator)
    if a.size < 2 or b.size < 2:
        return None
    rng = np.random.default_rng(seed)
    ma, mb = bootstrap_medians(a, resamples, rng), bootstrap_medians(b, resamples, rng)
    if (mb <= 0).any():
        return None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ma / mb, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
