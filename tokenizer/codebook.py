"""Nearest-centroid codebooks (the quantiser of both streams), the k-means that trains them, and a
DTW agreement score for comparing code sequences spoken at different rates."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


class NearestCentroidCodebook(nn.Module):
    """Maps feature vectors to the index of the nearest centroid (squared Euclidean distance).

    Features are standardised first with a stored per-dimension mean/std (identity for random tiny
    models), because raw ASR-encoder features have a few huge-variance dimensions that would otherwise
    decide every assignment.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.zeros(size, dim), requires_grad=False)  # [K, D]
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @property
    def size(self) -> int:
        return self.centroids.shape[0]

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> squared distances [..., K]."""
        z = (x - self.mean) / self.std
        c = self.centroids
        return (z * z).sum(-1, keepdim=True) - 2.0 * z @ c.T + (c * c).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> codes [...] (long)."""
        return self.distances(x).argmin(-1)

    def codes_and_margin(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [...] and the gap between the best and second-best distance [...].

        A tiny gap marks a near-tie, where rounding differences between two equally valid float
        evaluation orders (streamed vs offline) may legitimately pick different codes.
        """
        top = self.distances(x).topk(2, dim=-1, largest=False)
        return top.indices[..., 0], top.values[..., 1] - top.values[..., 0]

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids.detach().contiguous(), "mean": self.mean.contiguous(),
                   "std": self.std.contiguous()}
        save_file(tensors, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NearestCentroidCodebook":
        tensors = load_file(str(path))
        book = cls(*tensors["centroids"].shape)
        book.centroids.data.copy_(tensors["centroids"])
        book.mean.copy_(tensors["mean"])
        book.std.copy_(tensors["std"])
        return book

    @classmethod
    def fit(cls, features: torch.Tensor, size: int, **kmeans_args) -> "NearestCentroidCodebook":
        """Standardise `features` [N, D] and run k-means with `size` centroids."""
        feats = features.to(torch.float32)
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-5)
        book = cls(size, feats.shape[1])
        book.mean.copy_(mean)
        book.std.copy_(std)
        book.centroids.data.copy_(kmeans((feats - mean) / std, size, **kmeans_args))
        return book


def _nearest(x: torch.Tensor, c: torch.Tensor, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For x [N, D], centroids c [K, D]: (index [N], squared distance [N]); blocked to bound memory."""
    idx, dist = [], []
    c2 = (c * c).sum(-1)
    for start in range(0, x.shape[0], block):
        xb = x[start:start + block]
        d = (xb * xb).sum(-1, keepdim=True) - 2.0 * xb @ c.T + c2  # [n, K]
        m = d.min(-1)
        idx.append(m.indices)
        dist.append(m.values.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0, max_seconds: float = 120.0,
           log: Callable[[str], None] | None = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding. x [N, D] -> centroids [k, D].

    Empty clusters are re-seeded with the points farthest from their centroid, so every code is used.
    Stops after `iters` iterations, when assignments stop changing, or when `max_seconds` have passed.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"{n} vectors cannot train {k} centroids; use fewer codes or more data")
    gen = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    # k-means++: each new centroid is drawn with probability proportional to the squared distance.
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype)
    centroids[0] = x[torch.randint(n, (1,), generator=gen)]
    best = ((x - centroids[0]) ** 2).sum(-1)
    for j in range(1, k):
        pick = torch.multinomial(best.clamp_min(0) + 1e-12, 1, generator=gen)
        centroids[j] = x[pick]
        best = torch.minimum(best, ((x - centroids[j]) ** 2).sum(-1))
    assign = torch.full((n,), -1, dtype=torch.long)
    for it in range(iters):
        new_assign, dist = _nearest(x, centroids)
        changed = int((new_assign != assign).sum())
        assign = new_assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        empty = (~nonempty).nonzero().flatten()
        if len(empty):
            far = dist.topk(len(empty)).indices
            centroids[empty] = x[far]
        if log:
            log(f"k-means iter {it + 1}/{iters}: mean sq. dist {dist.mean():.4f}, {changed} changed, "
                f"{len(empty)} empty re-seeded")
        if (changed == 0 and not len(empty)) or time.monotonic() - start > max_seconds:
            break
    return centroids


def dtw_agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fraction of aligned positions with equal codes under the best monotone alignment, in [0, 1].

    DTW with cost 0 for equal codes and 1 otherwise; the cheapest path's cost is at most
    max(len(a), len(b)) (go diagonal, then straight), so 1 - cost / max(len) is a fraction.
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    cost = (a[:, None] != b[None, :]).astype(np.float64)  # [la, lb]
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        row, prev = acc[i], acc[i - 1]
        for j in range(1, len(b) + 1):
            row[j] = cost[i - 1, j - 1] + min(prev[j], row[j - 1], prev[j - 1])
    return 1.0 - acc[-1, -1] / max(len(a), len(b))
