"""Summary metrics from the score job's outputs (pandas over the written Parquet)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reviewlm.metrics import confusion_matrix, star_metrics


def prompt_summary(masks: pd.DataFrame, prompts: pd.DataFrame) -> dict:
    """Per model: mean wanted/unwanted share and mass in the top k, first wanted rank, VADER."""
    out = {}
    for model, m in masks.groupby("model"):
        p = prompts[(prompts["model"] == model) & prompts["error"].isna()]
        out[model] = {
            "prompts_scored": int(len(p)), "masks_scored": int(len(m)),
            "wanted_share": float(m["wanted_share"].mean()), "unwanted_share": float(m["unwanted_share"].mean()),
            "wanted_mass": float(m["wanted_mass"].mean()), "unwanted_mass": float(m["unwanted_mass"].mean()),
            "median_first_wanted_rank": float(m["first_wanted_rank"].median()),
            "mean_filled_vader": float(p["filled_vader"].mean()),
        }
    return out


def corpus_summary(corpus: pd.DataFrame) -> dict:
    out = {}
    for model, c in corpus.groupby("model"):
        n = int(c["n_masked"].sum())
        out[model] = {"reviews": int(len(c)), "masked_tokens": n,
                      "accuracy_at_1": float(c["correct_at_1"].sum() / max(n, 1)),
                      "accuracy_at_10": float(c["correct_at_10"].sum() / max(n, 1)),
                      "pseudo_perplexity": float(math.exp(min(c["nll_sum"].sum() / max(n, 1), 50)))}
    return out


def ratings_summary(ratings: pd.DataFrame) -> dict:
    out = {}
    for model, r in ratings.groupby("model"):
        entry = {"reviews": int(len(r)), "predicted_distribution":
                 {str(k): int(v) for k, v in r["predicted"].value_counts().sort_index().items()}}
        labelled = r.dropna(subset=["rating"])
        if len(labelled):
            entry.update(star_metrics(confusion_matrix(labelled["rating"].to_numpy(int) - 1,
                                                       labelled["predicted"].to_numpy(int) - 1)))
        out[model] = entry
    return out


def substitutions(masks: pd.DataFrame, base: str, other: str, decode, n: int = 10) -> list[dict]:
    """Per prompt: the tokens among both models' top 1000 whose probability rose/fell most."""
    out = []
    a = masks[(masks["model"] == base) & masks["top_ids"].notna()].set_index(["prompt_index", "mask_index"])
    b = masks[(masks["model"] == other) & masks["top_ids"].notna()].set_index(["prompt_index", "mask_index"])
    for key in sorted(set(a.index) & set(b.index)):
        pa_ = dict(zip(a.loc[key, "top_ids"], a.loc[key, "top_probs"]))
        pb = dict(zip(b.loc[key, "top_ids"], b.loc[key, "top_probs"]))
        floor_a, floor_b = min(pa_.values()), min(pb.values())
        delta = {t: pb.get(t, floor_b) - pa_.get(t, floor_a) for t in set(pa_) | set(pb)}
        ranked = sorted(delta.items(), key=lambda kv: kv[1])
        out.append({"prompt_index": int(key[0]), "mask_index": int(key[1]),
                    "rose": [{"token": decode(t), "delta": float(d)} for t, d in ranked[::-1][:n] if d > 0],
                    "fell": [{"token": decode(t), "delta": float(d)} for t, d in ranked[:n] if d < 0]})
    return out


def as_jsonable(obj):
    if isinstance(obj, dict):
        return {k: as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
