"""Distances, k nearest neighbours and gathering for batched point clouds, in PyTorch
(the torch callers' kNN; :mod:`.knn_numpy` is the numpy callers').

Everything is batched over a leading ``B`` axis, vectorized over points, and runs on the
input tensor's device and dtype (CPU or CUDA; nothing here assumes a device). The only
Python loops are over memory-bounding chunks of query rows.

Conventions (shared by :mod:`.sampling` and :mod:`.patches`):
    * Points are ``(B, N, C)`` (``C = 3`` for xyz); indices are ``int64`` into the point
      axis ``N``.
    * Distances are *squared* Euclidean distances.
    * Ties are broken towards the lower index, except inside ``torch.topk`` (kNN), whose
      order among exactly equal distances is unspecified.
"""

from __future__ import annotations

import torch

__all__ = ["gather_points", "knn", "square_distance"]


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
