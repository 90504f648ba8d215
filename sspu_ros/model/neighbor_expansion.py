"""Neighbour expansion unit (NEU) of SSPU-Net (paper §3.1, Eq. (1)).

For point i with feature ``x_i`` (c channels) and its r nearest neighbours *in xyz space*
``N_i = (j_1 .. j_r)``:

- ``A = [x_j for j in N_i]`` (r x c), ``B = [x_i] * r`` (r x c), ``F = [A; B]`` (r x 2c,
  channel-wise concatenation);
- a shared MLP maps every row of F to two numbers: ``W`` (r x 2) = ``[alpha, beta]``;
- ``h_j = sigmoid(alpha_j) * x_i + sigmoid(beta_j) * x_j`` (Eq. (1), implemented exactly as
  printed; the paper's prose calls alpha the neighbour weight and beta the centre weight,
  the opposite of Eq. (1), which makes no difference to what can be learned).

This yields r new features per point, so the neighbourhood size is always the upsampling
ratio r (the paper's "k = 4" is r at x4; at another ratio we take r neighbours so that r
features come out). By default the neighbourhood includes the point itself (its nearest
neighbour in xyz), so one of the r copies stays anchored to x_i and r - 1 interpolate towards
its neighbours; ``include_self=False`` uses the r nearest *other* points instead (the caller
supplies the neighbour indices either way).

Then, as in PU-GAN, a distinct 2-D grid code per copy is concatenated, and a self-attention
block fuses the r*N expanded features, followed by a shared MLP back to c channels.
Attention is either ``"global"`` (every expanded point attends to all r*N, O((rN)^2)) or
``"local"`` (every expanded point attends to the r copies of its parent's
``attention_seeds`` nearest input points in xyz, O(rN * r * attention_seeds)).

``expansion="duplicate"`` is the paper's "w/o NEU" ablation (Table 3): the r copies are plain
duplicates ``h_j = x_i``, told apart only by the grid code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..geometry.knn import gather_points

EXPANSIONS = ("neu", "duplicate")
ATTENTIONS = ("global", "local", "none")


def grid_codes(ratio: int, scale: float = 0.2) -> torch.Tensor:
    """r distinct 2-D codes on a regular a x b grid (a*b = r, a the largest divisor <= sqrt r)
    spanning [-scale, scale] along each used axis, as PU-GAN's grid mechanism: (r, 2).

    A prime r gives a 1 x r line of codes; r = 4 gives the 2 x 2 corners.
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    rows = max(d for d in range(1, math.isqrt(ratio) + 1) if ratio % d == 0)
    cols = ratio // rows

    def axis(n: int) -> torch.Tensor:
        return torch.linspace(-scale, scale, n) if n > 1 else torch.zeros(1)

    gy, gx = torch.meshgrid(axis(rows), axis(cols), indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def neighbor_interpolation(
    features: torch.Tensor, neighbor_features: torch.Tensor, weight_logits: torch.Tensor
) -> torch.Tensor:
    """Eq. (1): h_j = sigmoid(alpha_j) * x_i + sigmoid(beta_j) * x_j.

    features (B, N, C) = x_i; neighbor_features (B, N, r, C) = x_j for j in N_i;
    weight_logits (B, N, r, 2) = [alpha, beta]  ->  h (B, N, r, C).
    """
    alpha = torch.sigmoid(weight_logits[..., 0:1])  # (B, N, r, 1)
    beta = torch.sigmoid(weight_logits[..., 1:2])  # (B, N, r, 1)
    return alpha * features.unsqueeze(2) + beta * neighbor_features


class ExpandedSelfAttention(nn.Module):
    """Residual self-attention over the r*N expanded features (PU-GAN attention unit).

    Queries / keys are linear maps to ``max(1, C // 4)`` channels, values keep C; the
    attention output is added to the input (no learnable gate, so every weight gets gradient
    from the first step). Scaled dot-product softmax attention.
    """

    def __init__(self, channels: int, mode: str = "global") -> None:
        super().__init__()
        if mode not in ("global", "local"):
            raise ValueError(f"attention must be 'global' or 'local', got {mode!r}")
        self.mode = mode
        key_channels = max(1, channels // 4)
        self.query = nn.Linear(channels, key_channels)
        self.key = nn.Linear(channels, key_channels)
        self.value = nn.Linear(channels, channels)

    def forward(self, expanded: torch.Tensor, seed_idx: torch.Tensor | None = None) -> torch.Tensor:
        """expanded (B, N, r, C) -> (B, N, r, C).

        ``"global"``: all r*N features attend to all r*N. ``"local"``: needs seed_idx
        (B, N, S), the S nearest input points of every input point (itself included); the r
        copies of point i attend to the S*r copies of those points.
        """
        b, n, r, c = expanded.shape
        q, k, v = self.query(expanded), self.key(expanded), self.value(expanded)
        if self.mode == "global":
            out = F.scaled_dot_product_attention(
                q.reshape(b, 1, n * r, -1), k.reshape(b, 1, n * r, -1), v.reshape(b, 1, n * r, c)
            ).reshape(b, n, r, c)
        else:
            if seed_idx is None:
                raise ValueError("local attention needs seed_idx (B, N, S)")
            s = seed_idx.shape[-1]
            # Gather whole parents (r copies at once): (B, N, S, r*C') -> (B, N, S*r, C').
            k_local = gather_points(k.reshape(b, n, -1), seed_idx).reshape(b, n, s * r, -1)
            v_local = gather_points(v.reshape(b, n, -1), seed_idx).reshape(b, n, s * r, c)
            # N plays the role of the heads axis: (B, N, r, C') x (B, N, S*r, C').
            out = F.scaled_dot_product_attention(q, k_local, v_local)
        return expanded + out


class NeighborExpansionUnit(nn.Module):
    """features (B, N, C) + xyz neighbourhoods -> r expanded features per point (B, N, r, C).

    ``expansion``: ``"neu"`` (Eq. (1), learned weights) or ``"duplicate"`` (ablation).
    ``attention``: ``"global"``, ``"local"`` or ``"none"``. ``grid_code``: concatenate the
    PU-GAN 2-D code of every copy before attention. ``weight_hidden``: hidden width of the
    MLP that maps F's rows (2C) to [alpha, beta].
    """

    def __init__(
        self,
        channels: int,
        ratio: int,
        *,
        expansion: str = "neu",
        attention: str = "global",
        grid_code: bool = True,
        grid_scale: float = 0.2,
        weight_hidden: int = 64,
    ) -> None:
        super().__init__()
        if expansion not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {EXPANSIONS}, got {expansion!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio}")
        self.channels = int(channels)
        self.ratio = int(ratio)
        self.expansion = expansion
        self.use_grid_code = bool(grid_code)
        if expansion == "neu":
            self.weight_mlp = nn.Sequential(
                nn.Linear(2 * channels, weight_hidden), nn.ReLU(), nn.Linear(weight_hidden, 2)
            )
        else:
            self.weight_mlp = None
        if self.use_grid_code:
            self.register_buffer("grid", grid_codes(ratio, grid_scale), persistent=False)
        fused_channels = channels + (2 if self.use_grid_code else 0)
        self.attention = (
            None if attention == "none" else ExpandedSelfAttention(fused_channels, attention)
        )
        self.fuse = nn.Sequential(
            nn.Linear(fused_channels, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU()
        )

    def expand(self, features: torch.Tensor, neighbor_idx: torch.Tensor) -> torch.Tensor:
        """The bare expansion, before grid code and attention: (B, N, C), neighbor_idx
        (B, N, r) -> (B, N, r, C). Eq. (1) for ``"neu"``, r copies of x_i for ``"duplicate"``.
        """
        if self.expansion == "duplicate":
            return features.unsqueeze(2).expand(-1, -1, self.ratio, -1)
        neighbors = gather_points(features, neighbor_idx)  # A: (B, N, r, C)
        centre = features.unsqueeze(2).expand_as(neighbors)  # B: (B, N, r, C)
        weight_logits = self.weight_mlp(torch.cat([neighbors, centre], dim=-1))  # W: (B,N,r,2)
        return neighbor_interpolation(features, neighbors, weight_logits)

    def forward(
        self,
        features: torch.Tensor,
        neighbor_idx: torch.Tensor,
        seed_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features (B, N, C); neighbor_idx (B, N, r) the r xyz-neighbours used by Eq. (1);
        seed_idx (B, N, S) the xyz-neighbourhood for local attention -> (B, N, r, C)."""
        expanded = self.expand(features, neighbor_idx)  # (B, N, r, C)
        if self.use_grid_code:
            b, n = expanded.shape[:2]
            code = self.grid.to(expanded.dtype).expand(b, n, -1, -1)  # (B, N, r, 2)
            expanded = torch.cat([expanded, code], dim=-1)
        if self.attention is not None:
            expanded = self.attention(expanded, seed_idx)
        return self.fuse(expanded)
