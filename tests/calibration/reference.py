"""Brute-force float64 reference of EntropyCalibration2, written straight from the definition."""

from __future__ import annotations

import math

LEVELS = 128


def kl_divergence(counts, i):
    """KL(P||Q) for threshold bin ``i`` with plain loops."""
    bins = [float(c) for c in counts]
    p = bins[:i]
    p[i - 1] += sum(bins[i:])
    level_mass = [0.0] * LEVELS
    level_occupied = [0] * LEVELS
    for j in range(i):
        level = (LEVELS * j) // i
        level_mass[level] += bins[j]
        level_occupied[level] += bins[j] > 0
    q = [0.0] * i
    for j in range(i):
        if bins[j] > 0:
            level = (LEVELS * j) // i
            q[j] = level_mass[level] / level_occupied[level]
    p_total, q_total = sum(p), sum(q)
    divergence = 0.0
    for pj, qj in zip(p, q):
        if pj > 0:
            if qj == 0:
                return math.inf
            divergence += (pj / p_total) * math.log((pj / p_total) / (qj / q_total))
    return divergence


def entropy_amax(counts, width, start=LEVELS):
    divergences = [kl_divergence(counts, i) for i in range(start, len(counts))]
    best = min(range(len(divergences)), key=lambda k: divergences[k])
    return (best + start + 0.5) * width, divergences
