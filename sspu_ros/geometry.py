"""Batched point-cloud geometry in plain PyTorch: distances, kNN, gathering, farthest point
sampling, ball query, unit-sphere normalization and the inference patch protocol.

Everything is batched over a leading ``B`` axis, vectorized over points, and runs on the
input tensor's device and dtype (CPU or CUDA; nothing here assumes a device). The only
Python loops are over FPS iterations and over memory-bounding chunks of query rows.

Conventions:
    * Points are ``(B, N, C)`` (``C = 3`` for xyz); indices are ``int64`` into the point
      axis ``N``.
    * Distances are *squared* Euclidean distances.
    * Ties are broken towards the lower index, except inside ``torch.topk`` (kNN), whose
      order among exactly equal distances is unspecified.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "ball_query",
    "denormalize",
    "extract_patches",
    "farthest_point_sample",
    "gather_points",
    "knn",
    "normalize_unit_sphere",
    "seed_count",
    "square_distance",
]

#: Target size in bytes of one (B, chunk, N) distance block in :func:`knn` and
#: :func:`ball_query` when no ``chunk_size`` is given.
CHUNK_BUDGET_BYTES = 64 * 2**20


def _check_points(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, N, C) tensor, got {shape}")


def _check_pair(query: torch.Tensor, ref: torch.Tensor) -> None:
    _check_points(query, "query")
    _check_points(ref, "ref")
    if query.shape[0] != ref.shape[0] or query.shape[2] != ref.shape[2]:
        raise ValueError(
            f"query {tuple(query.shape)} and ref {tuple(ref.shape)} must agree in batch size "
            "and channels"
        )


def _rows_per_chunk(bytes_per_row: int, chunk_size: int | None) -> int:
    """Query rows per chunk: ``chunk_size`` if given, else as many as fit the budget."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, CHUNK_BUDGET_BYTES // max(1, bytes_per_row))


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances.

    Uses the expansion ``|a|^2 + |b|^2 - 2 a.b`` (one batched matmul), after shifting both
    sets by the mean of ``b`` (a translation, so the result is unchanged in exact
    arithmetic). Precision: the absolute error is a few units of rounding of
    ``|a - m|^2 + |b - m|^2`` (``m`` the mean of ``b``), i.e. about ``1e-7 * R^2`` in
    float32 for points within ``R`` of their centroid: ``~1e-6`` for unit-sphere patches,
    so distances below ``~1e-3`` carry a large *relative* error and exact duplicates may
    come out as a tiny positive number instead of 0. Negative round-off is clamped to 0.
    Compute ``((a[:, :, None] - b[:, None]) ** 2).sum(-1)`` where exact small distances
    matter.

    Args:
        a: (B, M, C) points.
        b: (B, N, C) points, same dtype and device.

    Returns:
        (B, M, N) squared distances, ``>= 0``, differentiable in ``a`` and ``b``.
    """
    _check_pair(a, b)
    if b.shape[1] > 0:
        shift = b.detach().mean(dim=1, keepdim=True)  # (B, 1, C)
        a = a - shift
        b = b - shift
    a_sq = (a * a).sum(-1)  # (B, M)
    b_sq = (b * b).sum(-1)  # (B, N)
    cross = torch.baddbmm(b_sq.unsqueeze(1), a, b.transpose(1, 2), alpha=-2.0)  # (B, M, N)
    return (cross + a_sq.unsqueeze(-1)).clamp_min(0.0)


def _knn_block(
    query: torch.Tensor, ref: torch.Tensor, k: int, exclude_self: bool, row_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """kNN of one chunk of query rows; ``row_offset`` = index of its first row in ref."""
    dist2 = square_distance(query, ref)  # (B, m, N)
    n_search = k + 1 if exclude_self else k
    dist2, idx = dist2.topk(n_search, dim=-1, largest=False, sorted=True)  # (B, m, n_search)
    if not exclude_self:
        return dist2, idx
    # Drop the query's own index wherever it is; where duplicates of the query pushed it
    # out of the n_search nearest, drop the last (farthest) column instead.
    self_idx = torch.arange(query.shape[1], device=idx.device).view(1, -1, 1)  # (1, m, 1)
    if row_offset:
        self_idx = self_idx + row_offset
    columns = torch.arange(n_search, device=idx.device)  # (k+1,)
    last = torch.full_like(idx, n_search - 1)
    drop_col = torch.where(idx == self_idx, columns, last).amin(-1, keepdim=True)  # (B, m, 1)
    keep = torch.arange(k, device=idx.device)  # (k,)
    keep = keep + (keep >= drop_col).long()  # (B, m, k): skip the dropped column
    return dist2.gather(-1, keep), idx.gather(-1, keep)


def knn(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest reference points of every query point (brute force, chunked).

    Distances come from :func:`square_distance` (see its precision note) and are selected
    with ``torch.topk(largest=False)``; the order among exactly equal distances is
    unspecified.

    Memory: query rows are processed in chunks of ``chunk_size`` rows; when it is None the
    chunk is chosen so one (B, chunk, N) distance block stays under
    :data:`CHUNK_BUDGET_BYTES` (64 MiB; peak use is about twice that).

    ONNX: with ``chunk_size >= M`` (or None and a small input) there is a single chunk and
    no Python control flow on tensor values, so the function traces/exports cleanly
    (``torch.onnx.export(..., dynamo=False)``; ``k`` becomes a constant, B, M and N may be
    dynamic axes; the exported graph always runs as one chunk).

    Args:
        query: (B, M, C) query points.
        ref: (B, N, C) reference points, same dtype and device.
        k: neighbours per query, ``1 <= k <= N`` (``k + 1 <= N`` with ``exclude_self``).
        exclude_self: the query set *is* the reference set (M == N, same order); drop each
            point's own index. Robust to duplicate points: the own index is removed
            wherever it appears among the k+1 nearest, else the farthest of them is.
        chunk_size: query rows per chunk, or None for the memory-based default.

    Returns:
        dist2: (B, M, k) squared distances, ascending along the last axis.
        idx: (B, M, k) int64 indices into ``ref``'s point axis.
    """
    _check_pair(query, ref)
    batch, n_query, _ = query.shape
    n_ref = ref.shape[1]
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if exclude_self and n_query != n_ref:
        raise ValueError(
            f"exclude_self needs query == ref, got {n_query} query and {n_ref} ref points"
        )
    n_search = k + 1 if exclude_self else k
    if n_search > n_ref:
        extra = " (+1 for exclude_self)" if exclude_self else ""
        raise ValueError(f"k={k}{extra} exceeds the {n_ref} reference points")
    rows = _rows_per_chunk(batch * n_ref * query.element_size(), chunk_size)
    if rows >= n_query:
        return _knn_block(query, ref, k, exclude_self, 0)
    parts = [
        _knn_block(query[:, start : start + rows], ref, k, exclude_self, start)
        for start in range(0, n_query, rows)
    ]
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick rows of ``x`` by index, per batch item (differentiable in ``x``).

    Args:
        x: (B, N, C) features or points.
        idx: (B, ...) integer indices into N, any number of trailing dims.

    Returns:
        (B, ..., C): ``out[b, i..., :] = x[b, idx[b, i...], :]``.
    """
    _check_points(x, "x")
    if idx.dim() < 1 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx must be (B, ...) with B={x.shape[0]}, got shape {tuple(idx.shape)}")
    batch, _, channels = x.shape
    flat = idx.reshape(batch, -1, 1).long().expand(-1, -1, channels)  # (B, I, C)
    return x.gather(1, flat).reshape(*idx.shape, channels)


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


def normalize_unit_sphere(
    xyz: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre each cloud on its mean and scale it into the unit ball.

    Args:
        xyz: (B, N, 3) points, N >= 1.

    Returns:
        normed: (B, N, 3) ``(xyz - centroid) / radius``; its farthest point has norm 1.
        centroid: (B, 1, 3) mean of each cloud.
        radius: (B, 1, 1) largest distance from the centroid, clamped to >= 1e-12 (so a
            single point or a collapsed cloud maps to the origin without NaNs).
    """
    _check_points(xyz, "xyz")
    centroid = xyz.mean(dim=1, keepdim=True)  # (B, 1, 3)
    centred = xyz - centroid
    radius = centred.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True).clamp_min(1e-12)
    return centred / radius, centroid, radius


def denormalize(xyz: torch.Tensor, centroid: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_unit_sphere`.

    Args:
        xyz: (B, N, 3) normalized points (N may differ from the normalized cloud's).
        centroid: (B, 1, 3).
        radius: (B, 1, 1).

    Returns:
        (B, N, 3) ``xyz * radius + centroid``.
    """
    return xyz * radius + centroid


def extract_patches(
    xyz: torch.Tensor,
    n_patches: int,
    patch_size: int,
    *,
    start: str = "first",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference patches: FPS seeds on the cloud, then each seed's nearest points.

    The patches are returned in the cloud's coordinates (not normalized; apply
    :func:`normalize_unit_sphere` to the (P, K, 3) batch per patch).

    Args:
        xyz: (N, 3) one point cloud.
        n_patches: P, number of FPS seeds, ``1 <= P <= N`` (see :func:`seed_count`).
        patch_size: points per patch; K = min(patch_size, N).
        start, generator: FPS start, as in :func:`farthest_point_sample`.

    Returns:
        patches: (P, K, 3) points, each patch ordered by distance to its seed (the seed,
            or a duplicate of it, first).
        idx: (P, K) int64 indices into ``xyz``: ``patches == xyz[idx]``.
    """
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 2:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise ValueError(f"xyz must be an (N, 3) tensor, got {shape}")
    n_points = xyz.shape[0]
    n_patches, patch_size = int(n_patches), int(patch_size)
    if n_patches < 1 or n_patches > n_points:
        raise ValueError(
            f"n_patches must be in [1, {n_points}] for {n_points} points, got {n_patches}"
        )
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    cloud = xyz.unsqueeze(0)  # (1, N, 3)
    seeds = farthest_point_sample(cloud, n_patches, start=start, generator=generator)  # (1, P)
    seed_xyz = gather_points(cloud, seeds)  # (1, P, 3)
    _, idx = knn(seed_xyz, cloud, min(patch_size, n_points))  # (1, P, K)
    return gather_points(cloud, idx)[0], idx[0]


def seed_count(n_points: int, patch_size: int = 256, ratio_of_coverage: float = 3) -> int:
    """Number of FPS seeds for the standard patch-based inference protocol.

    PU-GAN / PU-GCN take ``int(n_points / patch_size * ratio_of_coverage)`` seeds so that
    every point is covered by about ``ratio_of_coverage`` patches: 2048 points with
    256-point patches give 24 seeds. Computed here as the exact floor of
    ``n_points * ratio_of_coverage / patch_size`` (no float round-off), and at least 1 for
    a non-empty cloud (small clouds still get one patch).

    Args:
        n_points: points in the cloud, >= 0.
        patch_size: points per patch, >= 1.
        ratio_of_coverage: patches covering each point on average, > 0.

    Returns:
        Seed count (0 only for an empty cloud).
    """
    if n_points < 0 or patch_size < 1 or ratio_of_coverage <= 0:
        raise ValueError(
            f"need n_points >= 0, patch_size >= 1, ratio_of_coverage > 0; got {n_points}, "
            f"{patch_size}, {ratio_of_coverage}"
        )
    if n_points == 0:
        return 0
    return max(1, int(n_points * ratio_of_coverage // patch_size))
