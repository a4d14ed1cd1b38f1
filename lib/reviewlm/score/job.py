"""`reviewlm score`: several models side by side, on Ray Data actor pools, with a report."""

from __future__ import annotations

import re
import time

import pandas as pd
import ray
from ray.data import ActorPoolStrategy

from reviewlm.errors import UsageError
from reviewlm.io.readers import Columns, check_inputs, read_reviews, with_text
from reviewlm.io.sink import RoutedParquetSink
from reviewlm.io.storage import OutputDir, fingerprints, read_json
from reviewlm.models import portable_ref, resolve_model
from reviewlm.runtime import init_ray
from reviewlm.score import metrics as M
from reviewlm.score import scorer as S

SUBSTITUTION_PROMPTS = 20


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_models(specs: list[str]) -> dict[str, str]:
    """`NAME=REF` pairs in order, names unique; a bare REF is named after its last path part.

    Names end up in file names of the report, so they are plain words: letters, digits, `_.-`.
    """
    models = {}
    for spec in specs:
        name, _, ref = spec.partition("=") if "=" in spec else (spec.rstrip("/").rsplit("/", 1)[-1], "", spec)
        if not name or not ref:
            raise UsageError(f"--model takes NAME=REF, not {spec!r}")
        if not MODEL_NAME.fullmatch(name):
            raise UsageError(f"model name {name!r}: use letters, digits, '_', '.' or '-' (not first)")
        if name in models:
            raise UsageError(f"model name {name!r} given twice")
        models[name] = ref
    return models


def _read(out: OutputDir, route: str) -> pd.DataFrame:
    path = f"{out.tmp}/{route}"
    if not out.fs.exists(path):
        return pd.DataFrame()
    return pd.read_parquet(out.tmp_uri(route))


def score_models(models: dict[str, str], output: str, *, prompts: list[str], corpus: list[str] | None = None,
                 columns: Columns = Columns(), word_sets: dict, task: str = "mlm", top_k: int = 10,
                 batch_size: int = 256, num_actors: int | None = None, use_gpu: bool = False,
                 train_metrics: str | None = None, filter_stats: str | None = None, overwrite: bool = False,
                 address: str | None = None, num_cpus: int | None = None, arguments: dict | None = None) -> dict:
    """Score every model on the prompts (and the corpus); write predictions, summary, report."""
    if not models:
        raise UsageError("give at least one --model NAME=REF")
    if task not in ("mlm", "stars"):
        raise UsageError(f"--task must be mlm or stars, not {task!r}")
    if not 1 <= top_k <= 1000:
        raise UsageError("--top-k must be between 1 and 1000")
    if task == "stars" and not corpus:
        raise UsageError("--task stars scores reviews: give --corpus")
    paths = {name: resolve_model(ref) for name, ref in models.items()}  # fails fast; actors resolve again
    files, fs_in = [], None
    if corpus:
        fs_in, files = check_inputs(corpus, columns)
    extras = {"train": read_json(train_metrics) if train_metrics else None,
              "filter": read_json(filter_stats) if filter_stats else None}
    out = OutputDir(output, "score", overwrite).prepare()
    started = time.time()
    with out:
        init_ray(address, num_cpus)
        pool, per_actor, corpus_pool = _pools(num_actors, use_gpu)
        routes = {"predictions": S.PREDICTIONS, "masks": S.MASKS, "prompts": S.PROMPTS,
                  "corpus": S.CORPUS, "ratings": S.RATINGS}
        for i, (name, ref) in enumerate((n, portable_ref(r)) for n, r in models.items()):
            if task == "mlm" and prompts:
                ds = ray.data.from_items([{"prompt": p, "prompt_index": i} for i, p in enumerate(prompts)])
                ds.map_batches(S.MaskScorer, fn_constructor_args=(name, ref, use_gpu, top_k, word_sets,
                                                                  SUBSTITUTION_PROMPTS),
                               batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=pool),
                               **per_actor).write_datasink(RoutedParquetSink(out.tmp_uri(), routes, prefix=f"m{i}-p"))
            if corpus:
                reviews = read_reviews(fs_in, files, columns).map_batches(with_text, batch_format="pyarrow")
                actor = S.CorpusScorer if task == "mlm" else S.StarScorer
                scored = reviews.map_batches(actor, fn_constructor_args=(name, ref, use_gpu), batch_size=batch_size,
                                             batch_format="numpy", compute=ActorPoolStrategy(size=corpus_pool),
                                             **per_actor)
                scored.write_datasink(RoutedParquetSink(out.tmp_uri(), routes, prefix=f"m{i}-c"))
        scored_prompts = _read(out, "prompts")
        summary = _summary(out, models, paths, task, word_sets, scored_prompts)
        from reviewlm.report.render import write_report

        write_report(out, summary, _read(out, "predictions"), scored_prompts, extras)
        counts = {"models": len(models), "prompts": len(prompts),
                  "reviews": summary.get("corpus_reviews", 0)}
        out.commit(arguments or {}, fingerprints(files), counts, {"summary.json": summary})
        summary["wall_time_s"] = round(time.time() - started, 2)
        return summary


def _pools(num_actors: int | None, use_gpu: bool) -> tuple[int, dict, int]:
    """Actors for prompts, resources per actor, and actors for a corpus.

    A corpus is read by tasks that need a CPU while the actors run, so on CPUs its pool
    leaves one free: with every CPU held by an actor the reads could never be scheduled.
    """
    resources = ray.cluster_resources()
    if use_gpu:
        pool = num_actors or max(1, int(resources.get("GPU", 1)))
        return pool, {"num_gpus": 1}, pool
    cpus = int(resources.get("CPU", 1))
    if cpus < 2:
        return 1, {"num_cpus": 0.5}, 1
    pool = num_actors or cpus
    return pool, {"num_cpus": 1}, min(pool, cpus - 1)


def _summary(out: OutputDir, models: dict, paths: dict, task: str, word_sets: dict,
             prompts: pd.DataFrame) -> dict:
    from transformers import AutoTokenizer

    masks = _read(out, "masks")
    summary = {"task": task, "word_sets": word_sets,
               "models": {name: {"ref": ref, "path": paths[name]} for name, ref in models.items()}}
    if len(masks):
        for name, values in M.prompt_summary(masks, prompts).items():
            summary["models"][name].update(values)
    invalid = prompts[prompts["error"].notna()] if len(prompts) else prompts
    summary["invalid_prompts"] = ([] if not len(invalid) else invalid[invalid["model"] == next(iter(models))]
                                  [["prompt_index", "prompt", "error"]].to_dict("records"))
    corpus = _read(out, "corpus")
    if len(corpus):
        for name, values in M.corpus_summary(corpus).items():
            summary["models"][name]["corpus"] = values
        summary["corpus_reviews"] = int(corpus.groupby("model").size().max())
    ratings = _read(out, "ratings")
    if len(ratings):
        for name, values in M.ratings_summary(ratings).items():
            summary["models"][name]["stars"] = values
        summary["corpus_reviews"] = int(ratings.groupby("model").size().max())
    names = list(models)
    if len(masks) and len(names) > 1:
        tok = AutoTokenizer.from_pretrained(paths[names[0]])
        summary["substitutions"] = {
            f"{other} vs {names[0]}": M.substitutions(masks, names[0], other, lambda t: tok.decode([t]))
            for other in names[1:]}
    return M.as_jsonable(summary)
