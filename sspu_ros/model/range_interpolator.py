"""A learned range-image interpolator for virtual LiDAR beams (ILN-style, tiny).

For every virtual pixel between two kept beams (gap u, fraction t, column c) the network
looks at the window of kept pixels around it (:func:`~sspu_ros.geometry.range_window.
gather_windows`: R kept rows × C columns, N = R·C neighbours) and predicts

- its range as a softmax-weighted mean of the neighbours' ranges (empty neighbours get
  weight 0; by default the harmonic mean, i.e. linear in 1/r, exact along planes whatever
  the beam spacing) plus a small bounded residual (± ``residual_fraction`` of the reference
  range), so the output never leaves the range of the neighbourhood by more than that;
- a *return* logit (does this pixel hold a return at all: sky, absorbing surfaces, the
  empty space between a foreground object and the background behind it);
- a *trust* logit (is the predicted range within ``max(0.3 m, 3 %)`` of the truth): low
  at depth discontinuities, where a point would be a ghost bridging the two surfaces.

Inputs per gap pixel, independent of the absolute range: log range of each neighbour
relative to the nearest one in the window (two scales), validity flags, the absolute
vertical log-range differences between adjacent window rows (the discontinuity cue), the
log of the reference range, and t. The geometry (the neighbours' relative elevation
offsets ``a - R/2 + 1 - t`` and column offsets) is fixed per channel; it enters as t and as
a learned distance prior on the weights. All layers are 1×1 convolutions over the
(gaps × columns) image: fixed-size tensor ops, exportable to ONNX.

Scale transfer (trained on gaps 2× / 4× wider than deployed, see
:mod:`sspu_ros.training.range_interpolation`): ``smooth_gate`` fixes the weights to
(1-t, t) on the pixels above and below (no residual) where they differ by less than the
gate (a smooth surface), and ``normalize_spacing`` divides the relative range features and
the gate's jump by the training gap, so that a smooth surface seen through a wide gap looks
like the same surface at the deployed gap. The prototypes were trained with both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..geometry.range_window import gather_windows, window_offsets

__all__ = ["RangeInterpolator", "RangeInterpolatorConfig", "count_parameters",
           "export_range_interpolator", "load_range_interpolator", "save_range_interpolator"]

FORMAT = "sspu-range-interpolator/1"


@dataclass
class RangeInterpolatorConfig:
    rows_each_side: int = 2
    half_width: int = 2
    hidden: int = 48
    layers: int = 3
    residual_fraction: float = 0.02
    #: "inverse": weighted harmonic mean of the neighbour ranges (1/r is linear along
    #: a plane, so linear weights are exact on planar surfaces at any beam spacing);
    #: "linear": weighted arithmetic mean.
    mix: str = "inverse"
    #: > 0: where the pixels right above and below differ by less than this fraction of
    #: their range (a smooth surface), the weights are fixed: (1-t, t) on those two
    #: (linear in 1/r with ``mix="inverse"``) and no residual; the learned weights and
    #: residual blend in up to a jump of twice this. Keeps smooth surfaces independent
    #: of the beam spacing seen in training. 0: learned weights everywhere.
    smooth_gate: float = 0.0
    #: divide the relative range features and the gate's jump by ``spacing`` (the kept
    #: beams' angular gap in units of the deployed gap; training on a 16-beam image
    #: thinned to every s-th row uses spacing s): along a smooth surface the relative
    #: range change between kept beams grows about linearly with the gap, so a surface
    #: seen through wide training gaps looks like the same surface at the test gap.
    normalize_spacing: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class RangeInterpolator(nn.Module):
    """(B, K, W) kept ranges + validity, (T,) fractions -> per virtual pixel range and
    logits, each (B, T, K-1, W)."""

    def __init__(self, config: RangeInterpolatorConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or RangeInterpolatorConfig()
        rows, cols = 2 * cfg.rows_each_side, 2 * cfg.half_width + 1
        n = self.n_neighbors = rows * cols
        self.n_features = 3 * n + (rows - 1) * cols + 1
        self.first = nn.Conv2d(self.n_features, cfg.hidden, 1)
        self.first_t = nn.Parameter(torch.zeros(cfg.hidden))
        body = []
        for _ in range(cfg.layers - 1):
            body += [nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.hidden, 1)]
        body.append(nn.ReLU())
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(cfg.hidden, n + 3, 1)
        self.head_t = nn.Linear(1, n, bias=False)  # t-dependence of the weight logits
        drow, dcol = window_offsets(0.0, rows_each_side=cfg.rows_each_side,
                                    half_width=cfg.half_width)
        self.register_buffer("row_offset", torch.tensor(drow, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("col_offset", torch.tensor(dcol, dtype=torch.float32),
                             persistent=False)
        # distance prior on the weights: -(a·Δrow² + b·Δcol²), learned a, b (softplus)
        self.prior = nn.Parameter(torch.tensor([1.5, 0.5]))
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def features(self, rng: torch.Tensor, valid: torch.Tensor, spacing: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window features -> (B, F, K-1, W), neighbour ranges and validity (B, N, K-1,
        W), reference range (B, 1, K-1, W)."""
        cfg = self.config
        wr, wv = gather_windows(rng, valid, rows_each_side=cfg.rows_each_side,
                                half_width=cfg.half_width)
        return self.window_features(wr, wv, spacing)

    def window_features(self, wr: torch.Tensor, wv: torch.Tensor, spacing: float = 1.0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`features`, from already gathered windows (B, N, G, W): ranges (0
        where not valid) and validity, in the channel order of
        :func:`~sspu_ros.geometry.range_window.gather_windows`."""
        cfg = self.config
        big = torch.full_like(wr, 1e6)
        ref = torch.where(wv > 0, wr, big).amin(dim=1, keepdim=True)
        any_valid = (wv.amax(dim=1, keepdim=True) > 0).to(wr.dtype)
        ref = torch.where(any_valid > 0, ref, torch.ones_like(ref)).clamp_min(0.5)
        scale = 1.0 / spacing if self.config.normalize_spacing else 1.0
        lr = (scale * torch.log(torch.where(wv > 0, wr, ref).clamp_min(0.5) / ref)
              ).clamp(0.0, 2.0)
        rows, cols = 2 * cfg.rows_each_side, 2 * cfg.half_width + 1
        lg = torch.log(torch.where(wv > 0, wr, ref).clamp_min(0.5))
        b, _, g, w = wr.shape
        lg5 = lg.reshape(b, rows, cols, g, w)
        v5 = wv.reshape(b, rows, cols, g, w)
        dv = scale * (lg5[:, 1:] - lg5[:, :-1]).abs() * v5[:, 1:] * v5[:, :-1]
        feats = torch.cat([torch.tanh(20.0 * lr), lr, wv,
                           torch.tanh(20.0 * dv.reshape(b, (rows - 1) * cols, g, w)),
                           torch.log(ref) / 4.0], dim=1)
        return feats, wr, wv, ref

    def forward(self, rng: torch.Tensor, valid: torch.Tensor, t: torch.Tensor,
                spacing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            rng: (B, K, W) kept ranges (metres; anything where not valid).
            valid: (B, K, W) 1 where a kept pixel holds a return.
            t: (T,) fractions in (0, 1) of the virtual rows within each gap.
            spacing: the kept rows' gap in units of the deployed one (training only; a
                Python float, a constant in an export).

        Returns:
            range (B, T, K-1, W) metres, return logit and trust logit (B, T, K-1, W).
        """
        cfg = self.config
        wr, wv = gather_windows(rng, valid.to(rng.dtype), rows_each_side=cfg.rows_each_side,
                                half_width=cfg.half_width)
        return self.forward_windows(wr, wv, t, spacing)

    def forward_windows(self, wr: torch.Tensor, wv: torch.Tensor, t: torch.Tensor,
                        spacing: float = 1.0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` from gathered windows (B, N, G, W) (any G x W layout of gap
        pixels: every output depends on its own window only): (B, T, G, W) each."""
        feats, wr, wv, ref = self.window_features(wr, wv, spacing)
        b, _, g, w = feats.shape
        n_t = t.shape[0]
        h0 = self.first(feats)  # (B, H, G, W), shared by all t
        tt = t.to(feats.dtype).reshape(1, n_t, 1, 1, 1)
        h = h0.unsqueeze(1) + tt * self.first_t.reshape(1, 1, -1, 1, 1)
        h = self.body(h.reshape(b * n_t, -1, g, w))
        out = self.head(h).reshape(b, n_t, -1, g, w)
        n = self.n_neighbors
        a, c = nn.functional.softplus(self.prior).unbind(0)
        drow = self.row_offset.reshape(1, 1, n) - t.to(feats.dtype).reshape(1, n_t, 1)
        prior = -(a * drow ** 2 + c * self.col_offset.reshape(1, 1, n) ** 2)  # (1, T, N)
        prior = prior + self.head_t(t.to(feats.dtype).reshape(n_t, 1)).reshape(1, n_t, n)
        logits = out[:, :, :n] + prior.reshape(1, n_t, n, 1, 1)
        gate = None
        if self.config.smooth_gate > 0:
            gate, linear = self._smooth_gate(wr, wv, t.to(feats.dtype), spacing)
            logits = gate * logits + (1.0 - gate) * linear
        wv5 = wv.unsqueeze(1)
        logits = logits + (wv5 - 1.0) * 1e4
        # softmax over the neighbours (dim 2), written out: ONNX Runtime's Softmax on a
        # non-last axis transposes the tensor and took a quarter of the network's time
        e = torch.exp(logits - logits.amax(dim=2, keepdim=True))
        weights = e / e.sum(dim=2, keepdim=True)
        ref5 = ref.unsqueeze(1)  # (B, 1, 1, G, W)
        if self.config.mix == "inverse":
            inv = 1.0 / torch.where(wv > 0, wr, ref).clamp_min(0.5)
            mean = 1.0 / (weights * inv.unsqueeze(1)).sum(dim=2).clamp_min(1e-4)
        else:
            mean = (weights * wr.unsqueeze(1)).sum(dim=2)  # (B, T, G, W)
        resid = self.config.residual_fraction * torch.tanh(out[:, :, n]) * ref5[:, :, 0]
        if gate is not None:
            resid = resid * gate[:, :, 0]
        any_valid = wv.amax(dim=1).unsqueeze(1)  # (B, 1, G, W)
        ret = out[:, :, n + 1] - (1.0 - any_valid) * 30.0
        trust = out[:, :, n + 2] - (1.0 - any_valid) * 30.0
        return mean + resid, ret, trust


    def _smooth_gate(self, wr: torch.Tensor, wv: torch.Tensor, t: torch.Tensor,
                     spacing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate (B, 1, 1, G, W) in [0, 1] (0 on smooth surfaces) and the fixed linear
        logits (1, T, N, 1, 1): log(1-t), log(t) on the pixels above and below."""
        cfg = self.config
        cols = 2 * cfg.half_width + 1
        up = (cfg.rows_each_side - 1) * cols + cfg.half_width
        lo = up + cols
        ru, rl = wr[:, up:up + 1], wr[:, lo:lo + 1]
        both = wv[:, up:up + 1] * wv[:, lo:lo + 1]
        if cfg.normalize_spacing:  # |log ratio| (≈ relative jump), per unit of spacing
            jump = (torch.log(ru.clamp_min(0.5)) - torch.log(rl.clamp_min(0.5))).abs() / spacing
        else:
            jump = (ru - rl).abs() / torch.minimum(ru, rl).clamp_min(0.5)
        jump = torch.where(both > 0, jump, torch.ones_like(jump))
        g = cfg.smooth_gate
        gate = ((jump - g) / g).clamp(0.0, 1.0).unsqueeze(1)
        n, n_t = self.n_neighbors, t.shape[0]
        onehot_up = torch.zeros(n, dtype=t.dtype, device=t.device)
        onehot_up[up] = 1.0
        onehot_lo = torch.zeros(n, dtype=t.dtype, device=t.device)
        onehot_lo[lo] = 1.0
        tt = t.reshape(n_t, 1)
        linear = (onehot_up * torch.log((1 - tt).clamp_min(1e-6))
                  + onehot_lo * torch.log(tt.clamp_min(1e-6))
                  - 20.0 * (1.0 - onehot_up - onehot_lo))
        return gate, linear.reshape(1, n_t, n, 1, 1)


class _Deployed(nn.Module):
    """The interpolator at the deployed beam spacing (spacing = 1), on gathered windows."""

    def __init__(self, model: RangeInterpolator) -> None:
        super().__init__()
        self.model = model

    def forward(self, window_range: torch.Tensor, window_valid: torch.Tensor, t: torch.Tensor):
        return self.model.forward_windows(window_range, window_valid, t)


#: ONNX metadata key that marks a range-interpolator export (value: :data:`FORMAT`).
ONNX_KIND_KEY = "sspu.kind"


def export_range_interpolator(model: RangeInterpolator, path, *, pixels: int = 4096,
                              ratio: int = 4, opset: int = 17,
                              threshold: float = 0.5,
                              threshold_no_veto: float | None = None) -> None:
    """Export to ONNX on gathered windows (the gather is numpy,
    :func:`~sspu_ros.geometry.range_window.gather_pixel_windows`, so the graph is 1x1
    convolutions and elementwise maths only: TensorRT-friendly, one dynamic axis).

    Inputs ``window_range`` and ``window_valid`` (1, N, 1, P) float32 (N = window pixels,
    P = gap pixels, dynamic), ``t`` (r-1,) float32; outputs ``range_out``,
    ``return_logit``, ``trust_logit`` (1, r-1, 1, P). Metadata: ``sspu.kind``
    (:data:`FORMAT`), ``sspu.ratio``, ``sspu.threshold`` (the emit threshold with the
    bridge veto on), ``sspu.threshold_no_veto`` (without it),
    ``sspu.config`` (JSON: window size ...)."""
    model = _Deployed(model.eval())  # spacing fixed to 1 (a constant, not an input)
    n = model.model.n_neighbors
    wr = torch.rand(1, n, 1, pixels) * 30 + 2
    wv = (torch.rand(1, n, 1, pixels) > 0.1).float()
    t = torch.arange(1, ratio, dtype=torch.float32) / ratio
    pix = {3: "P"}
    torch.onnx.export(model, (wr * wv, wv, t), str(path), opset_version=opset,
                      input_names=["window_range", "window_valid", "t"],
                      output_names=["range_out", "return_logit", "trust_logit"],
                      dynamic_axes={"window_range": pix, "window_valid": pix,
                                    "range_out": pix, "return_logit": pix,
                                    "trust_logit": pix},
                      dynamo=False)
    import json

    import onnx

    proto = onnx.load(str(path))
    for key, value in ((ONNX_KIND_KEY, FORMAT), ("sspu.ratio", str(ratio)),
                       ("sspu.threshold", repr(float(threshold))),
                       ("sspu.threshold_no_veto", repr(float(
                           threshold if threshold_no_veto is None else threshold_no_veto))),
                       ("sspu.config", json.dumps(model.model.config.to_dict()))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_range_interpolator(path, model: RangeInterpolator, **meta) -> None:
    """Checkpoint: ``format``, ``config``, ``model`` (state dict) and any metadata (e.g.
    ``threshold``: the emit threshold on sigmoid(return)·sigmoid(trust); ``trained_on``)."""
    torch.save({"format": FORMAT, "config": model.config.to_dict(),
                "model": model.state_dict(), **meta}, str(path))


def load_range_interpolator(path, map_location="cpu") -> tuple[RangeInterpolator, dict]:
    """(model in eval mode, checkpoint dict). Raises ValueError for any other file."""
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a checkpoint"
        raise ValueError(f"{path}: not a range-interpolator checkpoint ({type(e).__name__})"
                         ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a range-interpolator checkpoint (format {FORMAT})")
    model = RangeInterpolator(RangeInterpolatorConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
