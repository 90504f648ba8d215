"""Neighbour windows of virtual beams in a range image (the learned interpolator's input).

A range image of K kept beams ``(K, W)`` (row = beam, top first; column = azimuth bin, see
:mod:`.beams`) has K-1 *gaps*; gap ``u`` lies between kept rows ``u`` and ``u+1``. A
*virtual* beam pixel sits in gap ``u`` at the fractional position ``t`` in (0, 1) (t = j/r
for the r-1 virtual rows of an r-fold upsampling) and column ``c``.

Its window is the ``(2·rows_each_side) × (2·half_width + 1)`` block of kept pixels in rows
``u-rows_each_side+1 .. u+rows_each_side`` and columns ``c-half_width .. c+half_width``
(azimuth wraps around; rows beyond the image are empty). Window row ``a`` is at the signed
elevation offset ``a - rows_each_side + 1 - t`` (in kept-row spacings) from the virtual
pixel, window column ``b`` at ``b - half_width`` columns.

Everything in torch is fixed-size slicing (no data-dependent loops): it exports to ONNX.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "bridge_mask",
    "smooth_steps",
    "gather_pixel_windows",
    "gather_windows",
    "gap_rows",
    "virtual_azimuth",
    "window_offsets",
]


def gather_windows(rng: torch.Tensor, valid: torch.Tensor, *, rows_each_side: int = 2,
                   half_width: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The window of every gap pixel.

    Args:
        rng: (B, K, W) float ranges of the kept rows (any value where not valid).
        valid: (B, K, W) bool or float, 1 where the pixel holds a return.
        rows_each_side: kept rows taken above the gap and below it (R = 2·rows_each_side).
        half_width: columns taken on each side (C = 2·half_width + 1).

    Returns:
        ranges (B, R·C, K-1, W) and valid (B, R·C, K-1, W) float (0 where padded or
        empty; ranges are 0 wherever valid is 0). Channel ``a·C + b`` holds window row a
        (kept row ``u + a - rows_each_side + 1`` for gap u) and column b (``c + b -
        half_width``).
    """
    if rng.dim() != 3 or valid.shape != rng.shape:
        raise ValueError(f"expected rng and valid of shape (B, K, W), got {tuple(rng.shape)} "
                         f"and {tuple(valid.shape)}")
    k, w = rng.shape[1], rng.shape[2]
    if k < 2:
        raise ValueError(f"need at least 2 kept rows, got {k}")
    v = valid.to(rng.dtype)
    r = torch.where(v > 0, rng, torch.zeros_like(rng))
    pad_rows = rows_each_side - 1

    def pad(x: torch.Tensor) -> torch.Tensor:  # (B, K, W) -> (B, K + 2p, W + 2h)
        x = x.unsqueeze(1)
        if half_width:
            x = torch.cat([x[..., w - half_width:], x, x[..., :half_width]], dim=-1)
        x = F.pad(x, (0, 0, pad_rows, pad_rows))  # zero rows: empty
        return x.squeeze(1)

    pr, pv = pad(r), pad(v)
    out_r, out_v = [], []
    for a in range(2 * rows_each_side):  # fixed-size slices, unrolled at export
        for b in range(2 * half_width + 1):
            out_r.append(pr[:, a:a + k - 1, b:b + w])
            out_v.append(pv[:, a:a + k - 1, b:b + w])
    return torch.stack(out_r, dim=1), torch.stack(out_v, dim=1)


def window_offsets(t: float | np.ndarray, *, rows_each_side: int = 2,
                   half_width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Relative offsets of the window pixels from a virtual pixel at fraction t.

    Returns:
        (…, R·C) elevation offsets in kept-row spacings (positive = below, rows increase
        downwards) and (R·C,) column offsets, in the channel order of
        :func:`gather_windows`.
    """
    c = 2 * half_width + 1
    rows = np.repeat(np.arange(2 * rows_each_side) - rows_each_side + 1, c).astype(np.float64)
    cols = np.tile(np.arange(c) - half_width, 2 * rows_each_side).astype(np.float64)
    t = np.asarray(t, dtype=np.float64)
    return rows - t[..., None], cols


def gap_rows(kept_rows: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Virtual rows of an r-fold upsampling between consecutive kept rows.

    Args:
        kept_rows: (K,) increasing row numbers of the kept beams in the dense image (e.g.
            ``0, 4, …, 60``); the dense rows between two kept ones must be ``ratio - 1``.
        ratio: r.

    Returns:
        (J,) gap index u, (J,) fraction t = j/r, (J,) dense row number, J = (K-1)(r-1),
        ordered by gap then t.
    """
    kept_rows = np.asarray(kept_rows, dtype=np.int64)
    if (np.diff(kept_rows) != ratio).any():
        raise ValueError(f"kept rows must be {ratio} apart, got {kept_rows.tolist()}")
    gaps = len(kept_rows) - 1
    u = np.repeat(np.arange(gaps), ratio - 1)
    j = np.tile(np.arange(1, ratio), gaps)
    return u, j / ratio, kept_rows[u] + j


def virtual_azimuth(azimuth: np.ndarray, t: np.ndarray, width: int) -> np.ndarray:
    """Azimuth of every virtual pixel: circular interpolation between the pixels above
    and below (as :func:`~.beams.interpolate_beams`), the one that exists when only one
    does, the column centre when neither.

    Args:
        azimuth: (K, W) azimuth of the kept pixels, NaN where empty.
        t: (T,) fractions of the virtual rows within a gap.

    Returns:
        (T, K-1, W) float64 radians.
    """
    aa, ab = azimuth[:-1][None], azimuth[1:][None]  # (1, K-1, W)
    t = np.asarray(t, dtype=np.float64)[:, None, None]
    centre = (np.arange(width) + 0.5) / width * 2 * np.pi - np.pi
    centre = np.broadcast_to(centre, (len(t), azimuth.shape[0] - 1, width))
    with np.errstate(invalid="ignore"):
        both = aa + np.angle(np.exp(1j * (ab - aa))) * t
    out = np.where(np.isfinite(both), both, np.where(np.isfinite(aa), aa,
                                                     np.where(np.isfinite(ab), ab, centre)))
    return np.broadcast_to(out, centre.shape).copy()


def gather_pixel_windows(ranges: np.ndarray, gap: np.ndarray, col: np.ndarray, *,
                         rows_each_side: int = 2, half_width: int = 2
                         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gather_windows` for a list of gap pixels only (numpy, vectorized).

    Args:
        ranges: (K, W) kept ranges, NaN where empty.
        gap: (P,) gap index u of each pixel (between kept rows u and u+1); col: (P,) column.

    Returns:
        ranges (R·C, P) float32 (0 where empty or beyond the image) and valid (R·C, P)
        float32, in the channel order of :func:`gather_windows`.
    """
    k, w = ranges.shape
    gap = np.asarray(gap, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    drow = np.arange(2 * rows_each_side) - rows_each_side + 1  # (R,)
    dcol = np.arange(-half_width, half_width + 1)  # (C,)
    rows = gap[None, None, :] + drow[:, None, None]  # (R, 1, P)
    cols = np.mod(col[None, None, :] + dcol[None, :, None], w)  # (1, C, P)
    inside = (rows >= 0) & (rows < k)
    vals = ranges[np.clip(rows, 0, k - 1), cols]  # (R, C, P)
    ok = inside & np.isfinite(vals)
    n = len(drow) * len(dcol)
    return (np.where(ok, vals, 0.0).astype(np.float32).reshape(n, -1),
            ok.astype(np.float32).reshape(n, -1))


def bridge_mask(neighbours: np.ndarray, pred: np.ndarray, *, min_jump: float = 1.0,
                rel_jump: float = 0.1, abs_tol: float = 0.3, rel_tol: float = 0.03
                ) -> np.ndarray:
    """Virtual pixels that bridge a depth discontinuity: their neighbours' ranges (NaN
    where empty) spread over ``max(min_jump, rel_jump · nearest)`` (an edge, the linear
    baseline's rule) and the predicted range is within ``max(abs_tol, rel_tol · pred)`` of
    none of them (on neither surface: a ghost).

    Args:
        neighbours: (S, ...) neighbour ranges of each pixel (S of them, e.g. the kept
            pixels above and below in columns c-1..c+1); pred: (...) predicted ranges.
    """
    with np.errstate(invalid="ignore"):
        near, far = np.fmin.reduce(neighbours, axis=0), np.fmax.reduce(neighbours, axis=0)
        edge = (far - near) > np.maximum(min_jump, rel_jump * near)
        tol = np.maximum(abs_tol, rel_tol * pred)
        on_surface = (np.abs(neighbours - pred[None]) <= tol[None]).any(axis=0)
    return edge & ~on_surface


def smooth_steps(ranges: np.ndarray, gap: np.ndarray, col: np.ndarray, *,
                 tolerance: float = 0.5) -> np.ndarray:
    """Gaps that are a smooth surface, not a depth edge: in the pixel's column and the two
    beside it, the step of 1/r from row u to u+1 agrees with the steps just above (u-1 to
    u) and below (u+1 to u+2) within ``tolerance`` times its size. 1/r is nearly linear
    down the beams of a plane (ground, a wall seen at a slant), so its far, large range
    jumps between sparse beams are not edges; at a car in front of a wall the step stands
    alone.

    Args:
        ranges: (K, W) real beams' ranges, NaN where empty; gap, col: (P,) gap pixels.

    Returns:
        (P,) bool; False where a row of the four is missing or beyond the image.
    """
    k, w = ranges.shape
    rows = np.asarray(gap)[None, :] + np.arange(-1, 3)[:, None]  # (4, P)
    inside = (rows >= 0) & (rows < k)
    ok = np.ones(rows.shape[1], dtype=bool)
    for dc in (-1, 0, 1):  # the bridge test's columns c-1..c+1: all of them smooth
        cols = np.mod(np.asarray(col) + dc, w)[None]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(inside, 1.0 / ranges[np.clip(rows, 0, k - 1), cols], np.nan)
            step = np.diff(inv, axis=0)  # (3, P): above, the gap's own, below
            own = np.abs(step[1])
            ok &= (np.abs(step[0] - step[1]) <= tolerance * own) & \
                (np.abs(step[2] - step[1]) <= tolerance * own)
        ok &= np.isfinite(step).all(axis=0)
    return ok
