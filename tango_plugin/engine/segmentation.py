"""Temporal segmentation (docs/algorithm.md §2): split T frames into runs of consecutive frames."""

from __future__ import annotations

from typing import List

import numpy as np
import torch


def consecutive_similarity(normed: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of frame t and t+1 for L2-normalised (T, ..., D) features -> (T-1, ...)."""
    return (normed[:-1] * normed[1:]).sum(dim=-1)


def holitom_segments(token_similarity: torch.Tensor, tau: float, max_window: int = 1024) -> List[int]:
    """Segment lengths maximising the number of tokens that can be dropped as temporally static.

    A window [s, e] scores (e - s) * #{tokens whose similarity stays > tau over all its frame pairs}; a dynamic
    programme picks the partition with the highest total (ties keep the shortest last window, as the
    reference's strict `>` does). Vectorised: per start frame, the run length of "similar" pairs of every
    token gives all window counts at once (O(T * L + T^2) instead of a T x T x L table).

    Args:
        token_similarity: (T-1, L) cosine similarity of consecutive frames per token.
        tau: similarity threshold.
        max_window: longest window in frames.
    """
    n_pairs, L = token_similarity.shape
    T = n_pairs + 1
    if T == 1:
        return [1]
    ok = (token_similarity > tau).cpu().numpy()
    # run[k, l]: number of consecutive similar pairs of token l starting at pair k
    run = np.zeros((n_pairs + 1, L), dtype=np.int64)
    for k in range(n_pairs - 1, -1, -1):
        run[k] = (run[k + 1] + 1) * ok[k]
    # static[s, w]: tokens similar over the w pairs of window [s, s + w] (w = 1..T-1)
    static = np.zeros((T, T), dtype=np.int64)
    for s in range(n_pairs):
        hist = np.bincount(run[s], minlength=T + 1)[: T + 1]
        static[s] = hist[::-1].cumsum()[::-1][:T]  # static[s, w] = #{l : run[s, l] >= w}
    dp = np.zeros(T + 1, dtype=np.int64)  # dp[i + 1] = best total over frames 0..i
    start = np.zeros(T, dtype=np.int64)
    for i in range(T):
        widths = np.arange(1, min(i + 1, max_window) + 1)  # w = 1 is frame i alone (value dp[i])
        starts = i - widths + 1
        values = dp[starts] + (widths - 1) * static[starts, widths - 1]
        best = int(np.argmax(values))  # first maximum = smallest width, as the reference's strict ">"
        dp[i + 1] = values[best]
        start[i] = starts[best]
    sizes = []
    end = T - 1
    while end >= 0:
        sizes.append(int(end - start[end] + 1))
        end = int(start[end]) - 1
    return sizes[::-1]


def fastvid_segments(frame_similarity: torch.Tensor, tau: float, min_cuts: int = 8) -> List[int]:
    """Cut after the `min_cuts - 1` least similar frame pairs and after every pair below `tau`.

    Args:
        frame_similarity: (T-1,) cosine similarity of consecutive frames' global embeddings.
        tau: similarity threshold.
        min_cuts: c of FastVID (the reference hard-codes 8).
    """
    n_pairs = frame_similarity.shape[0]
    if n_pairs == 0:
        return [1]
    sim = frame_similarity.float().cpu()
    n_low = min(min_cuts - 1, n_pairs)
    lowest = torch.sort(sim, stable=True).indices[:n_low]  # ties -> earlier pair
    below = torch.nonzero(sim < tau).flatten()
    cuts = torch.unique(torch.cat([lowest, below])).tolist()  # sorted
    bounds = [-1] + cuts + [n_pairs]  # a cut k ends a segment after frame k; the last frame closes one
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]
