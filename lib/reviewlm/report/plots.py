"""Matplotlib figures for the report; each returns PNG bytes."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reviewlm.results import FilterStats, ScoreResult, TrainResult  # noqa: E402

COLORS = {"wanted": "#2e8b57", "unwanted": "#c0392b", "other": "#8c8c8c"}


def _png(fig, bottom: float = 0.0) -> bytes:
    """PNG bytes; `bottom` keeps that fraction of the height free (for a legend below).

    A token in a label that the font has no glyph for (a model may predict any script) is
    drawn as a box, without a warning per glyph on the console.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.tight_layout(rect=(0, bottom, 1, 1))
        fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def topk_bars(prompt: str, preds: pd.DataFrame, models: list[str], word_sets: dict) -> bytes:
    """One panel per model: the top-k fills of the first mask, coloured by word set."""
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        p = preds[(preds["model"] == model) & (preds["mask_index"] == 0)].sort_values("rank")
        kinds = ["wanted" if t in word_sets["wanted"] else "unwanted" if t in word_sets["unwanted"] else "other"
                 for t in p["token"]]
        ax.barh(range(len(p))[::-1], p["probability"], color=[COLORS[k] for k in kinds])
        ax.set_yticks(range(len(p))[::-1], p["token"])
        ax.set(title=model, xlabel="probability")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    fig.legend(handles, ["wanted word", "unwanted word", "other"], loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(prompt, fontsize=10)
    return _png(fig, bottom=0.08)


def summary_bars(summary: ScoreResult) -> bytes:
    """Wanted/unwanted share and probability mass in the top k, per model."""
    models = {name: m.prompts for name, m in summary.models.items() if m.prompts}
    keys = ["wanted_share", "unwanted_share", "wanted_mass", "unwanted_mass"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(models), 1)
    for i, (model, scores) in enumerate(models.items()):
        ax.bar([k + i * width for k in range(len(keys))], [getattr(scores, k) for k in keys], width, label=model)
    ax.set_xticks([k + width * (len(models) - 1) / 2 for k in range(len(keys))],
                  ["wanted share", "unwanted share", "wanted mass", "unwanted mass"])
    ax.set(title="Wanted and unwanted words in the top k (mean over prompts)", ylabel="fraction")
    ax.legend()
    return _png(fig)


def substitution_bars(title: str, entry: dict) -> bytes:
    """Tokens whose probability rose (green) and fell (red) the most."""
    rows = [(r["token"], r["delta"]) for r in entry["rose"]] + [(r["token"], r["delta"]) for r in entry["fell"]]
    rows.sort(key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [d for _, d in rows], color=[COLORS["wanted"] if d > 0 else COLORS["unwanted"]
                                                          for _, d in rows])
    ax.set_yticks(range(len(rows)), [t for t, _ in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(title=title, xlabel="change in probability")
    return _png(fig)


def loss_curve(result: TrainResult) -> bytes:
    """Train and eval loss, and eval perplexity (masked LM, on a log scale: it falls by orders of
    magnitude) or accuracy, per epoch; model/ is the best."""
    epochs = result.epochs
    xs = [0] + [e.epoch for e in epochs]
    second = "perplexity" if result.task == "mlm" else "eval_accuracy"
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(xs[1:], [e.train_loss for e in epochs], "o-", label="train loss")
    a.plot(xs, [e.eval_loss for e in (result.before, *epochs)], "s-", label="eval loss")
    b.plot(xs, [getattr(e, second) for e in (result.before, *epochs)], "s-", color="C2")
    for ax in (a, b):
        ax.axvline(result.best.epoch, color="grey", linestyle=":", label="best (model/)")
    a.set(title=f"Loss ({result.model})", xlabel="epoch", ylabel="loss")
    a.legend()
    name, log = second.replace("eval_", ""), result.task == "mlm"
    b.set(title=f"Eval {name} (epoch 0: before training)", xlabel="epoch", yscale="log" if log else "linear",
          ylabel=f"{name} (log scale)" if log else name)
    return _png(fig)


def funnel(stats: FilterStats) -> bytes:
    steps = stats.filters
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(steps) + 1.4))
    names = [s.name for s in steps][::-1]
    ax.barh(names, [s.seen for s in steps][::-1], color="#d5d8dc", label="seen")
    ax.barh(names, [s.passed for s in steps][::-1], color=COLORS["wanted"], label="passed")
    ax.set(title=f"Filter funnel: {stats.kept} of {stats.rows_read} rows kept", xlabel="rows")
    ax.legend()
    return _png(fig)


def confusion(cm: list[list[int]], labels: list[str], title: str) -> bytes:
    """Counts of true (rows) against predicted (columns) classes, named."""
    side = 3.2 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(cm, cmap="Blues")
    ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(len(labels)), yticks=range(len(labels)))
    ax.set_xticklabels([str(v)[:14] for v in labels], rotation=30 if max(map(len, map(str, labels))) > 3 else 0,
                       ha="right" if max(map(len, map(str, labels))) > 3 else "center")
    ax.set_yticklabels([str(v)[:14] for v in labels])
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    fig.colorbar(im)
    return _png(fig)
