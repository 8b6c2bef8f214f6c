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
    static = static_counts(token_similarity > tau).cpu().numpy()  # the one host read: a (T, T) table
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


def static_counts(similar: torch.Tensor) -> torch.Tensor:
    """static[s, w] = number of tokens similar over all w pairs of the window [s, s + w] (w = 0..T-1), on the
    input's device: (T, T) int64 from the (T-1, L) mask of similar consecutive pairs.

    Per token, the run of similar pairs starting at pair s ends at the first dissimilar pair at or after s (a
    reversed running minimum of the dissimilar pairs' positions); a histogram of run lengths per start, summed
    from the top, counts the tokens whose run reaches each width.
    """
    n_pairs, L = similar.shape
    T = n_pairs + 1
    pair = torch.arange(n_pairs, device=similar.device)[:, None]
    breaks = torch.where(similar, torch.full_like(pair, n_pairs), pair).expand(n_pairs, L)
    first_break = torch.flip(torch.cummin(torch.flip(breaks, [0]), dim=0).values, [0])
    run = first_break - pair  # similar pairs in a row from pair s (at most T - 1)
    hist = torch.zeros(T, T + 1, dtype=torch.int64, device=similar.device)  # the last frame starts no window
    hist[:n_pairs].scatter_add_(1, run, torch.ones_like(run))
    return torch.flip(torch.cumsum(torch.flip(hist, [1]), dim=1), [1])[:, :T]


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
