"""The SSPU-Net generator: sparse patch (B, N, 3) -> dense patch (B, rN, 3).

Dense feature extraction (:mod:`.feature_extraction`) -> up-down-up with two stacked
neighbour expansion units (:mod:`.neighbor_expansion`) -> coordinate head.

Up-down-up (paper §3.1, as MPU / PU-GAN)::

    up1  = NEU1(X)                          (B, N, r, C)
    down = MLP(reshape(up1) to (B, N, rC))  (B, N, C)
    up2  = NEU2(down - X)                   (B, N, r, C)
    up   = up1 + up2                        (B, N, r, C)

The paper says only "subtract the new feature map with X and feed it into the second NEU";
adding NEU2's output back onto NEU1's is the MPU / PU-GAN up-down-up it builds on. The head
(shared MLP, C -> head_hidden -> 3) regresses an offset per copy, added to the repeated input
coordinates: output point ``i * r + j`` is ``xyz_i + offset_ij`` (point-major order, the r
copies of point i are consecutive). The head's last layer starts small (weights x0.01, zero
bias), so an untrained generator returns the input repeated with tiny offsets.

The forward pass has no data-dependent Python control flow: kNN runs as one chunk, so the
graph exports to ONNX with a dynamic batch axis at fixed N (see :func:`export_onnx`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..geometry.knn import knn
from .feature_extraction import DenseFeatureExtractor
from .neighbor_expansion import ATTENTIONS, EXPANSIONS, NeighborExpansionUnit

COORD_BASES = ("repeat", "interpolate")


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of :class:`Generator`; defaults are the paper-sized model.

    ratio: upsampling rate r (>= 2); also the NEU neighbourhood size (the paper's k = 4).
    channels: feature width C of the NEUs. lift_channels: C0 of the point-wise lifting.
    growth_rate / layers_per_block / n_blocks / compression_channels / knn_k: the dense
    feature extraction unit (k of its feature-space kNN graph).
    expansion: "neu" (Eq. (1)) or "duplicate" (the paper's "w/o NEU" ablation).
    attention: "global" (O((rN)^2)), "local" (each copy attends to the copies of its
    parent's ``attention_seeds`` nearest input points) or "none".
    grid_code / grid_scale: PU-GAN 2-D code per copy. neu_include_self: the NEU
    neighbourhood contains the point itself. weight_hidden: hidden width of the NEU weight
    MLP. head_hidden: hidden width of the coordinate head.
    coord_base: what the head's offsets are added to: "repeat" (the input point, r times)
    or "interpolate" (a learned convex combination of the point and its r-1 nearest
    neighbours per copy, the NEU's Eq. (1) mixing done on coordinates; it starts as copy 0 =
    the point, copy j = the midpoint to neighbour j). interp_prior: the initial logit margin
    of that start (the leak to the other neighbours is ~exp(-interp_prior)). offsets: add
    the head's free offsets to the base (False with "interpolate": every output point is a
    convex combination of the point and its neighbours, so it cannot leave their hull).
    candidates: r' >= ratio copies per point (0: r' = ratio). With r' > ratio the generator
    is over-complete: the NEUs expand every point to r' copies over its r' nearest points
    (itself included), ``forward`` returns r'·N candidates, copy 0 of every point is the
    point itself, and a selection (:mod:`sspu_ros.geometry.candidate_selection`: farthest point
    sampling from the input points, or :meth:`Generator.upsample`) keeps r·N. Needs
    coord_base "interpolate" (the candidates start as the midpoints to the r'-1 nearest
    neighbours, as the MLS + FPS baseline's).
    normal_shift: bound of a learned displacement of every generated copy along the local
    surface normal, as a fraction of the point's local spacing (mean distance to its r'-1
    nearest neighbours); 0 = off. The normal of a point is the smallest-variance direction of
    its knn_k nearest points (:func:`local_normals`), a copy's normal the blend of its
    sources' normals (signs aligned) with the copy's mixing weights; the head's 3-D output d
    gives the shift normal_shift·spacing·tanh(d·n)·n, which does not depend on the
    normal's sign. Needs coord_base "interpolate"; starts at ~0 (head_init_scale).
    learn_mix: the interpolating head's mixing weights are learned (True) or fixed at their
    start (False: copy 0 = the point, copy j = the midpoint to neighbour j); with False and
    offsets off, only the normal shift moves the copies.
    phong: Phong-tessellation shape factor alpha in [0, 1] of the interpolated copies (0 =
    off): a copy b = sum_m w_m p_m is replaced by (1 - alpha) b + alpha sum_m w_m pi_m(b),
    pi_m(b) = b - ((b - p_m).n_m) n_m its projection onto the tangent plane of source m
    (Boubekeur & Alexa 2008). The midpoint of a chord of length L = 2R sin(t) of a circle of
    radius R moves outward by alpha R sin(t)^2 cos(t) ~ alpha L^2 / (4R), twice the sagitta
    L^2 / (8R): alpha = 1/2 puts it on the circle (to second order), larger values
    overshoot. Normals as for normal_shift (their sign does not matter). Fixed geometry, no
    parameters; the learned normal shift acts on top.
    """

    ratio: int = 4
    channels: int = 128
    lift_channels: int = 24
    growth_rate: int = 24
    layers_per_block: int = 3
    n_blocks: int = 4
    compression_channels: int = 48
    knn_k: int = 16
    expansion: str = "neu"
    attention: str = "global"
    attention_seeds: int = 4
    grid_code: bool = True
    grid_scale: float = 0.2
    neu_include_self: bool = True
    weight_hidden: int = 64
    head_hidden: int = 64
    head_init_scale: float = 0.01
    coord_base: str = "repeat"
    interp_prior: float = 8.0
    offsets: bool = True
    candidates: int = 0
    normal_shift: float = 0.0
    learn_mix: bool = True
    phong: float = 0.0

    def __post_init__(self) -> None:
        if int(self.ratio) != self.ratio or self.ratio < 2:
            raise ValueError(f"ratio must be an integer >= 2, got {self.ratio}")
        if self.expansion not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {EXPANSIONS}, got {self.expansion!r}")
        if self.coord_base not in COORD_BASES:
            raise ValueError(f"coord_base must be one of {COORD_BASES}, got {self.coord_base!r}")
        if not self.offsets and self.coord_base != "interpolate":
            raise ValueError("offsets=False needs coord_base='interpolate' (else the output "
                             "would be the input repeated)")
        if self.coord_base == "interpolate" and not self.neu_include_self:
            raise ValueError("coord_base='interpolate' needs neu_include_self=True")
        if self.candidates and (int(self.candidates) != self.candidates
                                or self.candidates < self.ratio):
            raise ValueError(f"candidates must be 0 or an integer >= ratio={self.ratio}, got "
                             f"{self.candidates}")
        if self.candidates > self.ratio and self.coord_base != "interpolate":
            raise ValueError("candidates > ratio needs coord_base='interpolate'")
        if self.normal_shift < 0:
            raise ValueError(f"normal_shift must be >= 0, got {self.normal_shift}")
        if self.normal_shift > 0 and self.coord_base != "interpolate":
            raise ValueError("normal_shift > 0 needs coord_base='interpolate'")
        if not 0.0 <= self.phong <= 1.0:
            raise ValueError(f"phong must be in [0, 1], got {self.phong}")
        if self.phong > 0 and self.coord_base != "interpolate":
            raise ValueError("phong > 0 needs coord_base='interpolate'")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        for name in (
            "channels",
            "lift_channels",
            "growth_rate",
            "layers_per_block",
            "n_blocks",
            "compression_channels",
            "knn_k",
            "attention_seeds",
            "weight_hidden",
            "head_hidden",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def light(cls, **overrides) -> GeneratorConfig:
        """A CPU real-time variant: local attention, narrower features, three dense blocks."""
        base = dict(
            channels=64,
            lift_channels=16,
            growth_rate=16,
            layers_per_block=3,
            n_blocks=3,
            compression_channels=32,
            knn_k=16,
            attention="local",
            attention_seeds=4,
            weight_hidden=32,
            head_hidden=32,
        )
        base.update(overrides)
        return cls(**base)

    @property
    def copies(self) -> int:
        """Copies per point the generator outputs: r' (candidates) or r."""
        return max(int(self.candidates), int(self.ratio))

    def min_points(self) -> int:
        """The smallest patch size N the model accepts (the largest neighbourhood)."""
        neu_k = self.copies + (0 if self.neu_include_self else 1)
        seeds = self.attention_seeds if self.attention == "local" else 1
        return max(self.knn_k, neu_k, seeds)


def local_normals(xyz: torch.Tensor, idx: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """Unit normals: the smallest-variance direction of each point's neighbourhood.

    The covariance C of the neighbourhood (scaled by 1/trace) is inverted by its adjugate
    (adj(C) = det(C)·C^-1, element-wise formulas, so the graph stays plain ONNX) and
    ``iterations`` steps of inverse iteration v <- adj(C) v / |adj(C) v| run from a fixed
    start vector (no eigen-solver: ONNX has none). The sign is arbitrary.

    Args:
        xyz: (B, N, 3); idx: (B, N, K) neighbour indices (K >= 3, the point may be one).
    Returns:
        (B, N, 3) unit vectors.
    """
    b = xyz.shape[0]
    batch = torch.arange(b, device=xyz.device).view(b, 1, 1)
    nb = xyz[batch, idx]  # (B, N, K, 3)
    d = nb - nb.mean(2, keepdim=True)
    cov = d.transpose(-1, -2) @ d  # (B, N, 3, 3)
    trace = cov[..., 0, 0] + cov[..., 1, 1] + cov[..., 2, 2]
    cov = cov / (trace[..., None, None] + 1e-12)
    a, bb, c = cov[..., 0, 0], cov[..., 0, 1], cov[..., 0, 2]
    e, f, i = cov[..., 1, 1], cov[..., 1, 2], cov[..., 2, 2]
    adj = torch.stack([
        torch.stack([e * i - f * f, c * f - bb * i, bb * f - c * e], -1),
        torch.stack([c * f - bb * i, a * i - c * c, bb * c - a * f], -1),
        torch.stack([bb * f - c * e, bb * c - a * f, a * e - bb * bb], -1),
    ], -2)  # (B, N, 3, 3), symmetric
    v = torch.tensor([0.5773, 0.6172, 0.5345], dtype=xyz.dtype, device=xyz.device)
    v = v.expand(*xyz.shape[:2], 3)
    for _ in range(iterations):
        v = (adj @ v.unsqueeze(-1)).squeeze(-1)
        v = v / (v.norm(dim=-1, keepdim=True) + 1e-20)
    return v


class Generator(nn.Module):
    """SSPU-Net generator. forward: xyz (B, N, 3) -> (B, copies * N, 3) (copies = ratio, or
    cfg.candidates when over-complete), N >= cfg.min_points()."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ratio = int(cfg.ratio)
        self.copies = cfg.copies
        self.extractor = DenseFeatureExtractor(
            out_channels=cfg.channels,
            lift_channels=cfg.lift_channels,
            growth_rate=cfg.growth_rate,
            layers_per_block=cfg.layers_per_block,
            n_blocks=cfg.n_blocks,
            compression_channels=cfg.compression_channels,
            k=cfg.knn_k,
        )
        unit_args = dict(
            expansion=cfg.expansion,
            attention=cfg.attention,
            grid_code=cfg.grid_code,
            grid_scale=cfg.grid_scale,
            weight_hidden=cfg.weight_hidden,
        )
        self.neu1 = NeighborExpansionUnit(cfg.channels, self.copies, **unit_args)
        self.down = nn.Sequential(nn.Linear(self.copies * cfg.channels, cfg.channels), nn.ReLU())
        self.neu2 = NeighborExpansionUnit(cfg.channels, self.copies, **unit_args)
        self.offset_head = None if not cfg.offsets else nn.Sequential(
            nn.Linear(cfg.channels, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, 3)
        )
        if self.offset_head is not None:
            with torch.no_grad():
                self.offset_head[-1].weight.mul_(cfg.head_init_scale)
                self.offset_head[-1].bias.zero_()
        self.shift_head = None
        if cfg.normal_shift > 0:
            self.shift_head = nn.Sequential(
                nn.Linear(cfg.channels, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, 3)
            )
            with torch.no_grad():
                self.shift_head[-1].weight.mul_(cfg.head_init_scale)
                self.shift_head[-1].bias.zero_()
        if cfg.coord_base == "interpolate":
            r = self.copies
            self.mix_head = None
            if cfg.learn_mix:
                self.mix_head = nn.Sequential(
                    nn.Linear(cfg.channels, cfg.head_hidden), nn.ReLU(),
                    nn.Linear(cfg.head_hidden, r))
                with torch.no_grad():
                    self.mix_head[-1].weight.mul_(cfg.head_init_scale)
                    self.mix_head[-1].bias.zero_()
            # copy j mixes the point (slot 0) and neighbour j equally; copy 0 is the point
            prior = torch.full((r, r), -float(cfg.interp_prior))
            prior[:, 0] = 0.0
            prior[torch.arange(1, r), torch.arange(1, r)] = 0.0
            if cfg.learn_mix:
                self.mix_prior = nn.Parameter(prior)
            else:
                self.register_buffer("mix_prior", prior)

    def neighborhoods(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """xyz (B, N, 3) -> (NEU neighbour indices (B, N, r), local-attention seeds (B, N, S)
        or None). Both are nearest neighbours in xyz; the NEU's include the point itself
        unless cfg.neu_include_self is False."""
        cfg = self.cfg
        n_points = xyz.shape[1]
        seeds = cfg.attention_seeds if cfg.attention == "local" else 0
        k_with_self = max(seeds, self.copies if cfg.neu_include_self else 0)
        nearest = None
        if k_with_self > 0:
            _, nearest = knn(xyz, xyz, k_with_self, chunk_size=n_points)  # (B, N, k)
        if cfg.neu_include_self:
            neighbor_idx = nearest[..., : self.copies]
        else:
            _, neighbor_idx = knn(xyz, xyz, self.copies, exclude_self=True, chunk_size=n_points)
        seed_idx = nearest[..., :seeds] if seeds > 0 else None
        return neighbor_idx, seed_idx

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz (B, N, 3) -> (B, c * N, 3), c = self.copies; point i*c + j is copy j of input
        point i (with candidates > ratio: candidate j, candidate 0 = the point itself)."""
        if xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"expected xyz of shape (B, N, 3), got {tuple(xyz.shape)}")
        b, n, _ = xyz.shape
        if n < self.cfg.min_points():
            raise ValueError(
                f"patch has {n} points but this generator needs at least "
                f"{self.cfg.min_points()} (knn_k={self.cfg.knn_k}, ratio={self.ratio}, "
                f"attention_seeds={self.cfg.attention_seeds}); pad or merge small patches"
            )
        neighbor_idx, seed_idx = self.neighborhoods(xyz)
        features = self.extractor(xyz)  # X: (B, N, C)
        up1 = self.neu1(features, neighbor_idx, seed_idx)  # (B, N, r, C)
        down = self.down(up1.reshape(b, n, -1))  # (B, N, C)
        up2 = self.neu2(down - features, neighbor_idx, seed_idx)  # (B, N, r, C)
        up = up1 + up2
        offsets = self.offset_head(up) if self.cfg.offsets else 0.0  # (B, N, r, 3)
        if self.cfg.coord_base == "interpolate":
            logits = self.mix_prior if self.mix_head is None else self.mix_head(up) + self.mix_prior
            weights = torch.softmax(logits, dim=-1).expand(b, n, -1, -1)  # (B, N, r, r)
            batch = torch.arange(b, device=xyz.device).view(b, 1, 1)
            neighbors = xyz[batch, neighbor_idx]  # (B, N, r, 3), slot 0 = the point
            base = weights @ neighbors  # (B, N, r, 3): copy j = sum_m w_jm * neighbour m
            normals = None
            if self.shift_head is not None or self.cfg.phong > 0:
                _, normal_idx = knn(xyz, xyz, self.cfg.knn_k, chunk_size=n)  # (B, N, k)
                normals = local_normals(xyz, normal_idx)  # (B, N, 3), arbitrary signs
            if self.cfg.phong > 0:
                base = self._phong(base, neighbors, neighbor_idx, weights, normals)
            if self.shift_head is not None:
                base = base + self._normal_shift(xyz, neighbors, neighbor_idx, weights, up,
                                                 normals)
            if self.copies > self.ratio:  # candidate 0 is the point itself, exactly
                base = torch.cat([xyz.unsqueeze(2), base[:, :, 1:]], dim=2)
        else:
            base = xyz.unsqueeze(2)
        return (base + offsets).reshape(b, n * self.copies, 3)

    def _phong(self, base: torch.Tensor, neighbors: torch.Tensor, neighbor_idx: torch.Tensor,
               weights: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Phong tessellation of the interpolated copies (see GeneratorConfig.phong).

        base (B, N, c, 3): copy j = sum_m w_jm p_m; neighbors (B, N, c, 3) the sources p_m,
        neighbor_idx (B, N, c) their indices; weights (B, N, c, c); normals (B, N, 3)."""
        b = base.shape[0]
        batch = torch.arange(b, device=base.device).view(b, 1, 1)
        nb_normals = normals[batch, neighbor_idx]  # (B, N, c_m, 3)
        # height of copy j over the tangent plane of source m: (B, N, c_j, c_m)
        rel = base.unsqueeze(3) - neighbors.unsqueeze(2)  # (B, N, c_j, c_m, 3)
        height = (rel * nb_normals.unsqueeze(2)).sum(-1)
        # sum_m w_jm pi_m(b_j) = b_j - sum_m w_jm height_jm n_m
        correction = (weights * height) @ nb_normals  # (B, N, c_j, 3)
        return base - self.cfg.phong * correction

    def _normal_shift(self, xyz: torch.Tensor, neighbors: torch.Tensor,
                      neighbor_idx: torch.Tensor, weights: torch.Tensor,
                      up: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """The bounded displacement along the local normal of every copy: (B, N, c, 3).

        neighbors (B, N, c, 3) / neighbor_idx (B, N, c): each point's c nearest points
        (itself first); weights (B, N, c, c): the copies' mixing weights; up: (B, N, c, C);
        normals (B, N, 3) of the points (arbitrary signs)."""
        b, n = xyz.shape[:2]
        batch = torch.arange(b, device=xyz.device).view(b, 1, 1)
        nb_normals = normals[batch, neighbor_idx]  # (B, N, c, 3)
        sign = torch.sign((nb_normals * normals.unsqueeze(2)).sum(-1, keepdim=True) + 1e-12)
        blended = weights @ (nb_normals * sign)  # (B, N, c, 3): each copy's normal
        blended = blended / (blended.norm(dim=-1, keepdim=True) + 1e-12)
        spacing = (neighbors[:, :, 1:] - xyz.unsqueeze(2)).norm(dim=-1).mean(-1)  # (B, N)
        d = self.shift_head(up)  # (B, N, c, 3)
        amount = torch.tanh((d * blended).sum(-1, keepdim=True))  # (B, N, c, 1)
        return self.cfg.normal_shift * spacing[..., None, None] * amount * blended

    def upsample(self, xyz: torch.Tensor, selection: str = "fps") -> torch.Tensor:
        """xyz (B, N, 3) -> (B, r * N, 3): forward, then (over-complete generators) the
        selection of r·N: "fps" (the N inputs first, then farthest point sampling of the
        candidates, :func:`~sspu_ros.geometry.candidate_selection.select_fps`) or "per_point"
        (copy-major, r per point, :func:`~sspu_ros.geometry.candidate_selection.select_per_point`).
        A generator with copies == ratio returns its forward unchanged."""
        out = self(xyz)
        if self.copies == self.ratio:
            return out
        from ..geometry.candidate_selection import select_fps, select_per_point

        if selection == "fps":
            return select_fps(xyz, out, self.ratio)
        if selection == "per_point":
            return select_per_point(xyz, out, self.ratio)
        raise ValueError(f"selection must be 'fps' or 'per_point', got {selection!r}")


def build_generator(cfg: GeneratorConfig | None = None) -> Generator:
    """A freshly initialised :class:`Generator` for ``cfg`` (default: paper-sized, x4)."""
    return Generator(cfg if cfg is not None else GeneratorConfig())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, n_points: int = 256) -> int:
    """FLOPs of one forward pass on one n_points patch, as torch's FlopCounterMode counts
    them: matmuls / linear layers / attention only, 2 FLOPs per multiply-add (so this is
    2 x :func:`count_macs`); kNN top-k, softmax and element-wise ops are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    xyz = torch.randn(1, n_points, 3, device=param.device, dtype=param.dtype)
    xyz = xyz / xyz.norm(dim=-1).amax()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(xyz)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, n_points: int = 256) -> int:
    """Multiply-accumulates of one forward pass on one n_points patch (= count_flops / 2)."""
    return count_flops(model, n_points) // 2


def time_forward(model: nn.Module, batch: int, n_points: int = 256, repeats: int = 3) -> float:
    """Median wall time (s) of a no-grad forward of ``batch`` patches of n_points (1 warm-up)."""
    param = next(model.parameters())
    xyz = torch.randn(batch, n_points, 3, device=param.device, dtype=param.dtype)
    times = []
    with torch.no_grad():
        model(xyz)
        for _ in range(repeats):
            if xyz.is_cuda:
                torch.cuda.synchronize(xyz.device)
            start = time.perf_counter()
            model(xyz)
            if xyz.is_cuda:
                torch.cuda.synchronize(xyz.device)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def describe_generator(
    cfg: GeneratorConfig | None = None, n_points: int = 256, batches: tuple[int, ...] = ()
) -> str:
    """A one-paragraph summary: parameters, MACs / FLOPs per n_points patch and, for every
    batch size in ``batches``, the measured CPU forward time."""
    cfg = cfg if cfg is not None else GeneratorConfig()
    model = build_generator(cfg).eval()
    flops = count_flops(model, n_points)
    lines = [
        f"GeneratorConfig({', '.join(f'{k}={v}' for k, v in asdict(cfg).items())})",
        f"  parameters: {count_parameters(model):,}",
        f"  per {n_points}-point patch: {flops // 2 / 1e9:.3f} GMAC = {flops / 1e9:.3f} GFLOP",
    ]
    for batch in batches:
        seconds = time_forward(model, batch, n_points)
        lines.append(
            f"  forward of {batch} patches: {seconds * 1e3:.0f} ms "
            f"({seconds * 1e3 / batch:.1f} ms per patch, {torch.get_num_threads()} threads)"
        )
    return "\n".join(lines)


def export_onnx(model: Generator, path: str | Path, n_points: int = 256, opset: int = 17) -> Path:
    """Export ``model`` to ONNX: input "xyz" (batch, n_points, 3) float32 -> output "dense"
    (batch, copies * n_points, 3) (copies = ratio, or the candidates of an over-complete
    generator: the selection runs after the session); the batch axis is dynamic, n_points
    is fixed.

    Uses the TorchScript-based exporter (``dynamo=False``): the torch.export-based one
    (``dynamo=True``) needs the ``onnxscript`` package, which this project does not depend
    on. Every op is a plain ONNX op (TopK, GatherElements, MatMul, Softmax, ...).
    """
    import warnings

    path = Path(path)
    param = next(model.parameters())
    example = torch.randn(2, n_points, 3, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        # The shape checks in forward() see a fixed N: constant in the graph, as intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["xyz"],
            output_names=["dense"],
            dynamic_axes={"xyz": {0: "batch"}, "dense": {0: "batch"}},
            opset_version=opset,
        )
    model.train(was_training)
    # The traced reshapes leave the output's point axis symbolic; it is ratio * n_points.
    import onnx

    graph = onnx.load(str(path))
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = model.copies * n_points
    dims[2].Clear()
    dims[2].dim_value = 3
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path
