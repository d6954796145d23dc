"""The report's figures, one function per figure: data in, PNG file out (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in tests
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
          "axes.spines.right": False, "font.size": 9}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sparsity_per_layer(layers: list[dict], path: Path) -> Path:
    """Per pruned layer: sparsity after Wanda, after our merge, and after a plain LoRA merge."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(10, 3.4))
        x = range(len(layers))
        ax.plot(x, [r["before"] for r in layers], "o", ms=3, label="after sparsify (Wanda)")
        after = [(i, r["after"]) for i, r in enumerate(layers) if r["after"] is not None]
        if after:
            ax.plot(*zip(*after, strict=True), "x", ms=4, label="after merge")
        plain = [(i, r["plain_merge"]) for i, r in enumerate(layers) if r["plain_merge"] is not None]
        if plain:
            ax.plot(*zip(*plain, strict=True), ".", ms=3, color="tab:red",
                    label="a plain LoRA merge would leave")
        ax.set(xlabel="pruned layer (model order)", ylabel="sparsity (fraction of zeros)",
               ylim=(-0.02, 1.02), title="Per-layer sparsity before and after the merge")
        ax.legend(loc="center right", fontsize=8)
        return _save(fig, path)


def loss_curve(log: list[dict], path: Path) -> Path:
    """Training loss per step with a moving average, learning rate on a second axis."""
    steps = [r["step"] for r in log]
    loss = [r["loss"] for r in log]
    k = max(1, len(loss) // 20)
    avg = [sum(loss[max(0, i - k + 1): i + 1]) / len(loss[max(0, i - k + 1): i + 1])
           for i in range(len(loss))]
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(steps, loss, lw=0.8, alpha=0.4, label="loss (one sampled sub-adapter per step)")
        ax.plot(steps, avg, lw=1.8, label=f"moving average ({k} steps)")
        ax.set(xlabel="optimizer step", ylabel="answer cross-entropy", title="Training loss")
        if "lr" in log[0]:
            lr = ax.twinx()
            lr.plot(steps, [r["lr"] for r in log], color="gray", lw=0.8, ls="--")
            lr.set_ylabel("learning rate", color="gray")
            lr.grid(False)
        ax.legend(fontsize=8)
        return _save(fig, path)


def rank_histogram(rank_counts: dict[str, dict[str, int]], path: Path) -> Path:
    """How often each rank was sampled, per elastic group (NLS draws one per step)."""
    groups = [g for g, c in rank_counts.items() if len(c) > 1]
    ranks = sorted({int(r) for g in groups for r in rank_counts[g]}, reverse=True)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(10, 3.2))
        bottom = [0] * len(groups)
        for r in ranks:
            vals = [rank_counts[g].get(str(r), 0) for g in groups]
            ax.bar(range(len(groups)), vals, bottom=bottom, label=f"rank {r}")
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.removesuffix(".elastic").split(".")[-1] for g in groups], fontsize=7)
        ax.set(xlabel="elastic group (decoder block)", ylabel="steps",
               title="Sampled ranks per elastic group")
        ax.legend(fontsize=8, ncols=len(ranks), loc="lower right")
        return _save(fig, path)


def pareto(trials: list[dict], front: list[dict], metric: str, path: Path) -> Path:
    """Search trials: adapter parameters vs held-out score, the Pareto front, start and best."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.scatter([t["params"] / 1e6 for t in trials], [t["score"] for t in trials], s=14,
                   alpha=0.5, label="evaluated sub-adapters")
        ax.step([t["params"] / 1e6 for t in front], [t["score"] for t in front], where="post",
                color="tab:orange", label="Pareto front")
        start = trials[0]
        best = max(trials, key=lambda t: (t["score"], -t["params"]))
        ax.scatter([start["params"] / 1e6], [start["score"]], marker="s", s=50, color="tab:green",
                   label="heuristic (start)")
        ax.scatter([best["params"] / 1e6], [best["score"]], marker="*", s=120, color="tab:red",
                   label="chosen")
        ax.set(xlabel="active adapter parameters (millions)", ylabel=f"held-out {metric}",
               title="Sub-adapter search")
        ax.legend(fontsize=8)
        return _save(fig, path)


def accuracy_bars(rows: list[dict], path: Path) -> Path:
    """acc and acc_norm of every evaluated variant (acc alone for generative rows)."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
        y = range(len(rows))
        if all("acc_norm" in r for r in rows):
            ax.barh([i + 0.2 for i in y], [r["acc"] for r in rows], height=0.4, label="acc")
            ax.barh([i - 0.2 for i in y], [r["acc_norm"] for r in rows], height=0.4, label="acc_norm")
        else:
            ax.barh(list(y), [r["acc"] for r in rows], height=0.6, label="acc (mean over tasks)")
        ax.set_yticks(list(y))
        ax.set_yticklabels([r["variant"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="accuracy", xlim=(0, 1), title="Validation accuracy")
        ax.legend(fontsize=8, loc="lower right")
        return _save(fig, path)
