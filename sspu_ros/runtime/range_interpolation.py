"""Virtual beams of a spinning-LiDAR scan from the learned range-image interpolator.

A *beam interpolator* (``kind = "beams"``) is the LiDAR-native counterpart of a patch
:class:`~sspu_ros.runtime.upsampler.Upsampler`: instead of point patches it takes a scan's
(K, W) range image and predicts, for the r-1 virtual beams in every gap between adjacent
real beams, a range and an emit probability ``sigmoid(return) · sigmoid(trust)`` (a return
exists and the range is trusted: no ghost points bridging a depth discontinuity). The
densifier (:mod:`sspu_ros.densify.beams`) keeps the pixels above ``threshold`` and puts
them on the interpolated beam cones. Two backends, one interface (:meth:`predict`):

- :class:`LearnedBeamInterpolator`: the ``.pt`` checkpoint in PyTorch (CPU or CUDA);
- :class:`OrtBeamInterpolator`: the ``.onnx`` export in ONNX Runtime (width is dynamic,
  so only the columns the densifier needs are run).

:meth:`LearnedBeamInterpolator.interpolate` keeps the arguments and outputs of
:func:`~sspu_ros.geometry.beams.interpolate_beams` (the kitti-beams benchmark uses it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..geometry.beams import RangeImage, RingCones, points_on_cones
from ..geometry.range_window import (
    bridge_mask,
    gap_rows,
    gather_pixel_windows,
    smooth_steps,
    virtual_azimuth,
)
from ..model.range_interpolator import (
    FORMAT,
    ONNX_KIND_KEY,
    RangeInterpolator,
    load_range_interpolator,
)

__all__ = ["BeamInterpolatorBase", "LearnedBeamInterpolator", "OrtBeamInterpolator",
           "is_range_checkpoint", "is_range_onnx"]

#: The ratio a beam interpolator runs at unless asked otherwise (t = 1/4, 1/2, 3/4).
DEFAULT_RATIO = 4


def is_range_checkpoint(path: str | Path) -> bool:
    """True for a range-interpolator ``.pt`` (format key), False for anything else."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - unreadable: not ours; the real loader says why
        return False
    return isinstance(ck, dict) and ck.get("format") == FORMAT


def _onnx_meta(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value
            for p in onnx.load(str(path), load_external_data=False).metadata_props}


def is_range_onnx(path: str | Path) -> bool:
    """True for a range-interpolator ONNX export (``sspu.kind`` metadata)."""
    try:
        return _onnx_meta(path).get(ONNX_KIND_KEY) == FORMAT
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False


class BeamInterpolatorBase:
    """What every beam interpolator carries (the densifier reads these).

    Attributes:
        kind: ``"beams"`` (patch upsamplers have none, or ``"patches"``).
        ratio: r: r-1 virtual beams per gap, at t = j/r.
        threshold: emit threshold on the probability, chosen with the bridge veto on;
        threshold_no_veto: the one chosen without it (checkpoints may carry both:
            :meth:`emit_threshold` picks by the veto setting).
        half_width: context columns needed on each side of a column (the window).
        veto_bridges: also drop points that bridge a discontinuity (see :func:`_bridges`).
        fallback: the patch upsampler for scans without a beam structure (set by the
            loader; None: such scans are not densified).
    """

    kind = "beams"
    backend = "?"
    patch_size = 0
    fallback = None

    def _init_common(self, name: str, ratio: int | None, threshold: float,
                     half_width: int, veto_bridges: bool,
                     threshold_no_veto: float | None = None) -> None:
        ratio = DEFAULT_RATIO if ratio is None else int(ratio)
        if ratio < 2:
            raise ModelError(f"a beam interpolator needs ratio >= 2, got {ratio}")
        self.name, self.ratio, self.threshold = name, ratio, float(threshold)
        self.threshold_no_veto = float(threshold if threshold_no_veto is None
                                       else threshold_no_veto)
        self.half_width, self.veto_bridges = int(half_width), bool(veto_bridges)

    def emit_threshold(self, veto: bool) -> float:
        """The model's own emit threshold for this veto setting."""
        return self.threshold if veto else self.threshold_no_veto

    @property
    def fractions(self) -> np.ndarray:
        """(r-1,) float32 fractions t of the virtual beams in a gap."""
        return (np.arange(1, self.ratio) / self.ratio).astype(np.float32)

    rows_each_side = 2

    def _run(self, wr: np.ndarray, wv: np.ndarray, t: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """(N, P) window ranges/validity, (T,) fractions -> range and probability (T, P)."""
        raise NotImplementedError

    def predict_pixels(self, ranges: np.ndarray, gap: np.ndarray, col: np.ndarray,
                       ratio: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Range and emit probability of the r-1 virtual pixels of the given gap pixels
        only (the densifier's call: cost grows with the pixels asked for).

        Args:
            ranges: (K, W) ranges of the real beams, NaN where empty.
            gap: (P,) gap u (between rows u and u+1) and col: (P,) column of each pixel.

        Returns:
            range (r-1, P) and probability (r-1, P), float32.
        """
        ratio = self.ratio if ratio is None else int(ratio)
        t = (np.arange(1, ratio) / ratio).astype(np.float32)
        if len(gap) == 0:
            return np.zeros((len(t), 0), np.float32), np.zeros((len(t), 0), np.float32)
        wr, wv = gather_pixel_windows(ranges, gap, col, rows_each_side=self.rows_each_side,
                                      half_width=self.half_width)
        return self._run(wr, wv, t)

    def predict(self, ranges: np.ndarray, ratio: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(K, W) ranges (NaN where empty) -> range and emit probability of every virtual
        pixel, each (r-1, K-1, W) float32 (``ratio`` default: the interpolator's)."""
        k, w = ranges.shape
        gap, col = np.divmod(np.arange((k - 1) * w), w)
        pred, prob = self.predict_pixels(ranges, gap, col, ratio)
        return pred.reshape(-1, k - 1, w), prob.reshape(-1, k - 1, w)


class LearnedBeamInterpolator(BeamInterpolatorBase):
    """The learned interpolator in PyTorch (``device`` cpu or cuda)."""

    backend = "torch"

    def __init__(self, model: RangeInterpolator, *, threshold: float = 0.5,
                 name: str = "learned range interp", veto_bridges: bool = False,
                 ratio: int | None = None, device: str = "cpu",
                 threshold_no_veto: float | None = None) -> None:
        self.device = device
        self.model = model.eval().to(device)
        self.rows_each_side = model.config.rows_each_side
        self._init_common(name, ratio, threshold, model.config.half_width, veto_bridges,
                          threshold_no_veto)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, threshold: float | None = None,
                        name: str | None = None, veto_bridges: bool = False,
                        ratio: int | None = None, device: str = "cpu"
                        ) -> LearnedBeamInterpolator:
        model, ckpt = load_range_interpolator(path)
        thr = ckpt.get("threshold", 0.5) if threshold is None else threshold
        no_veto = ckpt.get("threshold_no_veto") if threshold is None else threshold
        return cls(model, threshold=thr, name=name or f"learned:{Path(path).stem}",
                   veto_bridges=veto_bridges, ratio=ratio, device=device,
                   threshold_no_veto=no_veto)

    def predict(self, ranges: np.ndarray, ratio: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Whole image through the network's own window gather (faster in PyTorch than
        the per-pixel windows when every pixel is wanted)."""
        ratio = self.ratio if ratio is None else int(ratio)
        valid = np.isfinite(ranges)
        rng = torch.from_numpy(np.where(valid, ranges, 0.0).astype(np.float32))[None]
        t = torch.arange(1, ratio, dtype=torch.float32) / ratio
        with torch.inference_mode():
            pred, ret, trust = self.model(rng.to(self.device),
                                          torch.from_numpy(valid).float()[None].to(self.device),
                                          t.to(self.device))
            prob = torch.sigmoid(ret) * torch.sigmoid(trust)
        return pred[0].cpu().numpy(), prob[0].cpu().numpy()

    def _run(self, wr: np.ndarray, wv: np.ndarray, t: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        def as_input(a: np.ndarray) -> torch.Tensor:  # (N, P) -> (1, N, 1, P)
            return torch.from_numpy(a)[None, :, None].to(self.device)

        with torch.inference_mode():
            pred, ret, trust = self.model.forward_windows(
                as_input(wr), as_input(wv), torch.from_numpy(t).to(self.device))
            prob = torch.sigmoid(ret) * torch.sigmoid(trust)
        return pred[0, :, 0].cpu().numpy(), prob[0, :, 0].cpu().numpy()

    def interpolate(self, sparse: RangeImage, kept_rows: np.ndarray, kept_cones: RingCones,
                    *, n_rows: int, threshold: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """As :func:`~sspu_ros.geometry.beams.interpolate_beams`: (M, 3) float64 points of
        the kept virtual pixels and their (M,) int64 dense rows. The kept rows must be
        equally spaced (r apart); rows outside the first and last kept row are not
        extrapolated."""
        kept_rows = np.asarray(kept_rows, dtype=np.int64)
        if sparse.range.shape[0] != len(kept_rows) or len(kept_cones) != len(kept_rows):
            raise ValueError(f"{sparse.range.shape[0]} image rows, {len(kept_rows)} kept "
                             f"rows and {len(kept_cones)} cones must agree")
        ratio = int(kept_rows[1] - kept_rows[0]) if len(kept_rows) > 1 else 1
        if len(kept_rows) < 2 or ratio < 2 or kept_rows[-1] >= n_rows:
            return np.zeros((0, 3)), np.zeros(0, np.int64)
        u, t, row = gap_rows(kept_rows, ratio)
        pred, prob = self.predict(sparse.range, ratio)  # (T, G, W)
        width = sparse.range.shape[1]
        ts = np.arange(1, ratio) / ratio
        az = virtual_azimuth(sparse.azimuth, ts, width)  # (T, G, W)
        # gap-major order as gap_rows: (G, T, W) -> (J, W)
        pred = pred.transpose(1, 0, 2).reshape(-1, width)
        prob = prob.transpose(1, 0, 2).reshape(-1, width)
        az = az.transpose(1, 0, 2).reshape(-1, width)
        thr = self.emit_threshold(self.veto_bridges) if threshold is None else threshold
        emit = prob > thr
        if self.veto_bridges:
            emit &= ~_bridges(sparse.range, pred, u, width)
        jj, cc = np.nonzero(emit)
        tj = t[jj]
        elev = ((1 - tj) * kept_cones.elevation_deg[u[jj]]
                + tj * kept_cones.elevation_deg[u[jj] + 1])
        z0 = (1 - tj) * kept_cones.z0[u[jj]] + tj * kept_cones.z0[u[jj] + 1]
        pts = points_on_cones(pred[jj, cc].astype(np.float64), az[jj, cc], elev, z0)
        return pts.reshape(-1, 3), row[jj]


def _bridges(kept: np.ndarray, pred: np.ndarray, gap: np.ndarray, width: int) -> np.ndarray:
    """(J, W) bool: virtual pixels at a depth discontinuity whose range is on none of the
    surfaces around them (:func:`~sspu_ros.geometry.range_window.bridge_mask`); the
    neighbourhood is the kept pixels above and below in columns c-1..c+1 (azimuth wraps).

    Args:
        kept: (K, W) kept ranges (NaN where empty); pred: (J, W) predicted ranges of the
            virtual rows; gap: (J,) gap index of each virtual row.
    """
    rows = np.stack([np.roll(kept[gap + d], s, axis=1) for d in (0, 1) for s in (-1, 0, 1)])
    smooth = smooth_steps(kept, np.repeat(gap, width), np.tile(np.arange(width), len(gap)))
    return bridge_mask(rows, pred) & ~smooth.reshape(len(gap), width)

class OrtBeamInterpolator(BeamInterpolatorBase):
    """The ONNX export (:func:`~sspu_ros.model.range_interpolator.export_range_interpolator`)
    in ONNX Runtime. ``providers`` in order of preference (unavailable ones dropped),
    ``threads`` intra-op threads (0: ONNX Runtime's default)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, threshold: float | None = None,
                 name: str | None = None, veto_bridges: bool = False,
                 ratio: int | None = None, providers=None, threads: int = 0) -> None:
        import onnxruntime as ort

        meta = _onnx_meta(path)
        if meta.get(ONNX_KIND_KEY) != FORMAT:
            raise ModelError(f"{path}: not a range-interpolator export ({ONNX_KIND_KEY} "
                             f"metadata is {meta.get(ONNX_KIND_KEY)!r})")
        config = json.loads(meta.get("sspu.config", "{}"))
        available = ort.get_available_providers()
        wanted = list(providers or ("CPUExecutionProvider",))
        usable = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False  # widths vary per scan (see the patch backend)
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=usable)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise ModelError(f"cannot load ONNX model {path}: {e}") from None
        self.providers = list(self.session.get_providers())
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        thr = float(meta.get("sspu.threshold", 0.5)) if threshold is None else threshold
        no_veto = meta.get("sspu.threshold_no_veto") if threshold is None else threshold
        self.rows_each_side = int(config.get("rows_each_side", 2))
        self._init_common(name or str(path), ratio, thr, int(config.get("half_width", 2)),
                          veto_bridges, None if no_veto is None else float(no_veto))

    def _run(self, wr: np.ndarray, wv: np.ndarray, t: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        feed = {"window_range": wr[None, :, None], "window_valid": wv[None, :, None], "t": t}
        pred, ret, trust = self.session.run(None, feed)
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-ret[0, :, 0])) / (1.0 + np.exp(-trust[0, :, 0]))
        return pred[0, :, 0], prob.astype(np.float32)
