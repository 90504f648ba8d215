"""PNG figures of the quality benchmark (matplotlib, Agg backend: no display needed).

- :func:`plot_shapes`: one row per shape, one column per cloud (input, each method,
  ground truth), 3-D scatter plots all seen from the same view, in the shape's frame.
- :func:`plot_metrics`: CD, HD and P2F of every method as bar charts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VIEW = {"elev": 20.0, "azim": -60.0}  # one camera for every panel


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_shapes(rows: list[tuple[str, dict[str, np.ndarray]]], path: str | Path, *,
                point_size: float = 0.4, max_points: int = 8192) -> Path:
    """Grid of 3-D scatter plots.

    Args:
        rows: (shape name, {column label: (M, 3) points}); every row has the same labels
            in the same order (e.g. input, methods..., ground truth).
        path: output PNG.
        max_points: clouds with more points are thinned (evenly by index) for drawing.

    Returns:
        ``path``.
    """
    if not rows:
        raise ValueError("plot_shapes needs at least one shape")
    plt = _pyplot()
    labels = list(rows[0][1])
    n_r, n_c = len(rows), len(labels)
    fig = plt.figure(figsize=(2.4 * n_c, 2.4 * n_r), dpi=110)
    for r, (shape, clouds) in enumerate(rows):
        ref = np.asarray(clouds[labels[0]], dtype=np.float64)
        centre = 0.5 * (ref.min(0) + ref.max(0))
        half = 0.5 * float((ref.max(0) - ref.min(0)).max()) or 1.0
        for c, label in enumerate(labels):
            xyz = np.asarray(clouds[label], dtype=np.float64)
            if xyz.shape[0] > max_points:
                xyz = xyz[np.linspace(0, xyz.shape[0] - 1, max_points).astype(np.int64)]
            ax = fig.add_subplot(n_r, n_c, r * n_c + c + 1, projection="3d")
            ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=point_size, c=xyz[:, 2],
                       cmap="viridis", linewidths=0, depthshade=False)
            for set_lim, k in ((ax.set_xlim, 0), (ax.set_ylim, 1), (ax.set_zlim, 2)):
                set_lim(centre[k] - half, centre[k] + half)
            ax.set_box_aspect((1, 1, 1), zoom=1.4)
            ax.view_init(**VIEW)
            ax.set_axis_off()
            title = f"{label} ({len(clouds[label])} pts)"
            ax.set_title(f"{shape}: {title}" if c == 0 else title, fontsize=7)
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_metrics(result: dict, path: str | Path) -> Path:
    """Bar charts of CD, HD and P2F (×1e-3) per method of a ``run_quality`` result."""
    plt = _pyplot()
    names = list(result["methods"])
    metrics = [("cd_e3", "CD (x1e-3)"), ("hd_e3", "HD (x1e-3)"), ("p2f_mean_e3", "P2F (x1e-3)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.5 * len(names) + 2),
                             dpi=110)
    y = np.arange(len(names))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        vals = [result["methods"][m][key] for m in names]
        shown = np.array([v if v is not None else 0.0 for v in vals])
        ax.barh(y, shown, color="tab:blue")
        err = [result["methods"][m].get("p2f_std_e3") for m in names] if key == "p2f_mean_e3" \
            else None
        if err is not None and all(e is not None for e in err):
            ax.errorbar(shown, y, xerr=err, fmt="none", ecolor="gray", capsize=2, lw=0.8)
        for yi, v in zip(y, vals, strict=True):
            ax.text(v if v is not None else 0.0, yi, f" {v:.3f}" if v is not None else " n/a",
                    va="center", fontsize=7)
        ax.set_yticks(y, [n[-28:] for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{len(result['shapes'])} shapes, x{result.get('ratio', 4)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
