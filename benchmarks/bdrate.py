"""Bjøntegaard deltas between two rate-quality curves (VCEG-M33).

BD-rate: fit log(rate) as a cubic polynomial of quality for each curve, integrate both over the quality
interval the curves share, and turn the mean log-rate gap into a percentage: how many more bits (positive)
or fewer bits (negative) the test codec spends than the anchor at equal quality.
BD-quality (BD-PSNR for PSNR): the same with the roles of the axes swapped, in the quality's own unit.

Curves with fewer than four points get the highest degree their points allow (a line through two).
Curves whose ranges do not overlap have no delta: both functions return NaN.
"""

from __future__ import annotations

import math

import numpy as np

MAX_DEGREE = 3


def bd_rate(anchor_rate, anchor_quality, test_rate, test_quality) -> float:
    """Mean rate difference of test against anchor at equal quality, in percent (negative: test is cheaper)."""
    mean_log_rate_gap = _mean_gap_over_overlap(
        x_anchor=anchor_quality, y_anchor=np.log(anchor_rate), x_test=test_quality, y_test=np.log(test_rate)
    )
    return (math.exp(mean_log_rate_gap) - 1) * 100 if math.isfinite(mean_log_rate_gap) else math.nan


def bd_quality(anchor_rate, anchor_quality, test_rate, test_quality) -> float:
    """Mean quality difference of test against anchor at equal rate, in the quality's unit (dB for PSNR)."""
    return _mean_gap_over_overlap(
        x_anchor=np.log(anchor_rate), y_anchor=anchor_quality, x_test=np.log(test_rate), y_test=test_quality
    )


def msssim_to_db(msssim):
    """MS-SSIM on a decibel scale, -10 log10(1 - MS-SSIM), so that curves near 1 spread out."""
    return -10 * np.log10(1 - np.asarray(msssim, dtype=float))


def _mean_gap_over_overlap(x_anchor, y_anchor, x_test, y_test) -> float:
    """Mean of (fitted test y - fitted anchor y) over the x interval both curves cover; NaN if none."""
    anchor = _finite_points(x_anchor, y_anchor)
    test = _finite_points(x_test, y_test)
    if anchor is None or test is None:
        return math.nan
    low = max(anchor[0].min(), test[0].min())
    high = min(anchor[0].max(), test[0].max())
    if not low < high:
        return math.nan
    area_between = _integral_of_fit(*test, low, high) - _integral_of_fit(*anchor, low, high)
    return float(area_between / (high - low))


def _finite_points(x, y):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 2:
        return None
    return x, y


def _integral_of_fit(x, y, low, high) -> float:
    degree = min(MAX_DEGREE, len(np.unique(x)) - 1)
    antiderivative = np.polyint(np.polyfit(x, y, degree))
    return np.polyval(antiderivative, high) - np.polyval(antiderivative, low)
