"""Farthest point sampling and ball query for batched point clouds, in PyTorch.

Conventions as :mod:`.knn` (``(B, N, C)`` points, squared distances, int64 indices; ties
to the lower index). The only Python loop is over FPS iterations (and query chunks).
"""

from __future__ import annotations

import numpy as np
import torch

from .knn import _check_pair, _check_points, _rows_per_chunk, square_distance

__all__ = ["ball_query", "farthest_point_sample"]

def _fps_start(
    batch: int, n_points: int, start: str, generator: torch.Generator | None
) -> torch.Tensor:
    """(B,) int64 first FPS index, on the generator's device (CPU without one)."""
    if start == "first":
        return torch.zeros(batch, dtype=torch.long)
    if start == "random":
        device = generator.device if generator is not None else None
        return torch.randint(n_points, (batch,), generator=generator, device=device)
    raise ValueError(f'start must be "first" or "random", got {start!r}')


def _fps_torch(xyz: torch.Tensor, n_samples: int, start_idx: torch.Tensor) -> torch.Tensor:
    """FPS in torch on xyz's device. xyz (B, N, C), start_idx (B,) -> (B, S) int64."""
    batch, n_points, channels = xyz.shape
    points = xyz.detach()
    if points.element_size() < 4:
        points = points.float()  # half precision distances would tie far too often
    points_t = points.transpose(1, 2).contiguous()  # (B, C, N): contiguous per coordinate
    selected = torch.empty(batch, n_samples, dtype=torch.long, device=xyz.device)
    min_dist2 = torch.full((batch, n_points), float("inf"), dtype=points.dtype, device=xyz.device)
    diff = torch.empty_like(points_t)
    farthest = start_idx.to(xyz.device).view(batch, 1)
    for i in range(n_samples):
        selected[:, i : i + 1] = farthest
        min_dist2.scatter_(1, farthest, -1.0)  # never pick a selected point again
        centre = points_t.gather(2, farthest.unsqueeze(1).expand(batch, channels, 1))
        torch.sub(points_t, centre, out=diff)
        diff.square_()
        torch.minimum(min_dist2, diff.sum(1), out=min_dist2)
        farthest = min_dist2.argmax(-1, keepdim=True)  # first index among ties
    return selected


def _fps_numpy(xyz: torch.Tensor, n_samples: int, start_idx: torch.Tensor) -> torch.Tensor:
    """The same algorithm as :func:`_fps_torch` in numpy (about 3x faster on CPU, where
    torch's per-op overhead dominates). xyz (B, N, C) on CPU -> (B, S) int64."""
    batch, n_points, channels = xyz.shape
    points = xyz.detach()
    if points.dtype != torch.float64:
        points = points.float()
    points_t = np.ascontiguousarray(points.numpy().transpose(0, 2, 1))  # (B, C, N)
    rows = np.arange(batch)
    selected = np.empty((batch, n_samples), dtype=np.int64)
    min_dist2 = np.full((batch, n_points), np.inf, dtype=points_t.dtype)
    dist2 = np.empty_like(min_dist2)
    term = np.empty_like(min_dist2)
    farthest = start_idx.cpu().numpy().astype(np.int64)
    for i in range(n_samples):
        selected[:, i] = farthest
        min_dist2[rows, farthest] = -1.0  # never pick a selected point again
        centre = points_t[rows, :, farthest]  # (B, C)
        np.subtract(points_t[:, 0], centre[:, :1], out=dist2)
        np.multiply(dist2, dist2, out=dist2)
        for c in range(1, channels):
            np.subtract(points_t[:, c], centre[:, c : c + 1], out=term)
            np.multiply(term, term, out=term)
            dist2 += term
        np.minimum(min_dist2, dist2, out=min_dist2)
        farthest = min_dist2.argmax(axis=1)  # first index among ties
    return torch.from_numpy(selected)


def farthest_point_sample(
    xyz: torch.Tensor,
    n_samples: int,
    *,
    start: str = "first",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Iterative farthest point sampling (FPS).

    Starting from one point, repeatedly take the point whose distance to the already
    selected set is largest (a running minimum distance per point; one iteration per
    sample, vectorized over B and N). Ties go to the lowest index. The selected indices
    are distinct: a selected point is never taken again, so on clouds with duplicate
    points the duplicates are taken, in index order, only once every other point is
    covered. Not differentiable (indices only).

    CPU tensors run a numpy loop (S=2048 of N=8192, B=1: ~45 ms of one core; torch's
    per-op overhead makes the torch loop ~2.5x slower there); other devices run the same
    algorithm in torch on the device. Both give the same indices (tested), barring
    float rounding that differs between the two at exact-tie level.

    Args:
        xyz: (B, N, C) points, usually C = 3.
        n_samples: S, number of points to select, ``0 <= S <= N``.
        start: ``"first"`` starts every batch item at index 0 (deterministic);
            ``"random"`` draws each item's start uniformly from ``generator``.
        generator: torch.Generator for ``start="random"`` (any device), or None for
            torch's global CPU RNG.

    Returns:
        (B, S) int64 indices into N, on xyz's device, in selection order.
    """
    _check_points(xyz, "xyz")
    batch, n_points, _ = xyz.shape
    n_samples = int(n_samples)
    if n_samples < 0 or n_samples > n_points:
        raise ValueError(
            f"n_samples must be in [0, {n_points}] for {n_points} points, got {n_samples}"
        )
    start_idx = _fps_start(batch, n_points, start, generator)
    if n_samples == 0:
        return torch.empty(batch, 0, dtype=torch.long, device=xyz.device)
    if xyz.device.type == "cpu":
        return _fps_numpy(xyz, n_samples, start_idx)
    return _fps_torch(xyz, n_samples, start_idx)


def _radius_squared(
    radius: float | torch.Tensor, batch: int, n_query: int, like: torch.Tensor
) -> torch.Tensor:
    """radius (float, 0-d, (B,) or (B, M)) -> (B, M, 1) squared radius (an expanded view)."""
    if not isinstance(radius, torch.Tensor):
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
    r = torch.as_tensor(radius, dtype=like.dtype, device=like.device)
    if r.dim() == 0:
        r = r.reshape(1, 1, 1)
    elif tuple(r.shape) == (batch,):
        r = r.reshape(batch, 1, 1)
    elif tuple(r.shape) == (batch, n_query):
        r = r.unsqueeze(-1)
    else:
        raise ValueError(
            f"radius must be a float or a ({batch},) or ({batch}, {n_query}) tensor, "
            f"got shape {tuple(r.shape)}"
        )
    return r.clamp_min(0.0).square().expand(batch, n_query, 1)


def _ball_query_block(
    query: torch.Tensor, ref: torch.Tensor, radius2: torch.Tensor, n_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ball query of one chunk of query rows; radius2 (B, m, 1)."""
    n_ref = ref.shape[1]
    dist2 = square_distance(query, ref)  # (B, m, N)
    inside = dist2 < radius2  # (B, m, N)
    count = inside.sum(-1)  # (B, m)
    order = torch.arange(n_ref, device=ref.device)
    keys = torch.where(inside, order, n_ref)  # (B, m, N): own index inside, N outside
    n_take = min(n_samples, n_ref)
    first = keys.topk(n_take, dim=-1, largest=False, sorted=True).values  # (B, m, n_take)
    nearest = dist2.argmin(-1, keepdim=True)  # (B, m, 1)
    pad = torch.where(count.unsqueeze(-1) > 0, first[..., :1], nearest)  # (B, m, 1)
    idx = torch.where(first < n_ref, first, pad)
    if n_samples > n_take:
        idx = torch.cat([idx, pad.expand(-1, -1, n_samples - n_take)], dim=-1)
    return idx, count


def ball_query(
    query: torch.Tensor,
    ref: torch.Tensor,
    radius: float | torch.Tensor,
    n_samples: int,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference points inside a ball around each query point (PointNet++ convention).

    A reference point is inside when its squared distance is strictly below
    ``radius**2`` (as PointNet++'s ``query_ball_point``, which PU-GAN's uniform loss uses),
    with distances from :func:`square_distance`. The first ``n_samples`` inside points
    *in reference order* are returned; slots beyond the number found repeat the first
    found index. A query with no reference point inside (impossible when the query
    points are among the reference points and radius > 0) gets its nearest reference
    point in every slot.

    Memory: chunked over query rows like :func:`knn`.

    Args:
        query: (B, M, C) ball centres.
        ref: (B, N, C) points searched, N >= 1, same dtype and device.
        radius: float, or a (B,) / (B, M) tensor of per-cloud / per-query radii; negative
            tensor entries act as 0 (a negative float raises).
        n_samples: slots per query, >= 1 (may exceed N).
        chunk_size: query rows per chunk, or None for the memory-based default.

    Returns:
        idx: (B, M, n_samples) int64 indices into ``ref``'s point axis.
        count: (B, M) int64 true number of reference points inside each ball, **not**
            capped at ``n_samples`` (``count.clamp(max=n_samples)`` gives the filled slots).
    """
    _check_pair(query, ref)
    batch, n_query, _ = query.shape
    n_ref = ref.shape[1]
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if n_ref < 1:
        raise ValueError("ball_query needs at least one reference point")
    radius2 = _radius_squared(radius, batch, n_query, query)  # (B, M, 1)
    rows = _rows_per_chunk(batch * n_ref * (query.element_size() + 9), chunk_size)
    if rows >= n_query:
        return _ball_query_block(query, ref, radius2, n_samples)
    idx_parts, count_parts = [], []
    for start in range(0, n_query, rows):
        idx, count = _ball_query_block(
            query[:, start : start + rows], ref, radius2[:, start : start + rows], n_samples
        )
        idx_parts.append(idx)
        count_parts.append(count)
    return torch.cat(idx_parts, dim=1), torch.cat(count_parts, dim=1)
