"""Calibration plots: similarity heat maps, schedule raster, caching error with BUA picks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless robots and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bac_ros.bac.schedule import CacheSchedule  # noqa: E402


def plot_similarity_grid(sim: np.ndarray, names: Sequence[str], path: Path) -> Path:
    n = len(names)
    cols = 6 if n > 6 else n
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(sim[i], vmin=min(0.0, float(sim.min())), vmax=1.0, cmap="viridis")
            ax.set_title(names[i], fontsize=8)
    fig.suptitle("Block feature cosine similarity across denoising steps (step i vs t)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_schedule_raster(schedule: CacheSchedule, path: Path) -> Path:
    table = np.array(schedule.table(), dtype=float).T  # (blocks, K)
    fig, ax = plt.subplots(figsize=(max(6, schedule.num_steps / 8), max(3, schedule.n_blocks / 4)))
    ax.imshow(table, aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_yticks(range(schedule.n_blocks), schedule.block_names, fontsize=6)
    ax.set_xlabel("denoising step k (0 = noisiest)")
    ax.set_title(f"{schedule.method} schedule: black = recompute, white = reuse "
                 f"({100 * schedule.computed_fraction:.1f}% computed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_caching_error(err: np.ndarray, names: Sequence[str], selected: Sequence[str],
                       path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, len(names) / 3), 3))
    colors = ["tab:red" if n in selected else "tab:blue" for n in names]
    ax.bar(range(len(names)), err, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("L1 caching error err_b")
    ax.set_title("Caching error per block (red: selected by BUA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
