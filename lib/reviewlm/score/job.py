"""`reviewlm score`: several models side by side, on Ray Data actor pools, with a report."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from reviewlm.errors import UsageError
from reviewlm.io.layout import Columns
from reviewlm.io.ledger import RECORDS, Done, Keys, ledger_path, markers, read_record, recover, skip_done, write_record
from reviewlm.io.quarantine import Quarantined, write_quarantine
from reviewlm.io.readers import check_inputs, read_reviews, with_reasons, with_text
from reviewlm.io.sink import RoutedParquetSink
from reviewlm.io.storage import OutputDir, arrow_filesystem, filesystem, fingerprints, read_json
from reviewlm.models import OFFLINE, portable_ref, resolve_model
from reviewlm.options import RunOptions, ScoreArgs
from reviewlm.progress import Meter, progress
from reviewlm.results import FilterStats, ModelScores, ScoreResult, TrainResult
from reviewlm.runtime import actor_pool, init_ray
from reviewlm.score import metrics as M
from reviewlm.score import scorer as S
from reviewlm.score.prompts import Prompts

SUBSTITUTION_PROMPTS = 20
# Writes take no CPU: scored rows go to storage as they come, while the actors hold every CPU
# (a write task waiting for a CPU would hold every scored block in the object store until the end)
WRITES = {"ray_remote_args": {"num_cpus": 0}}
# The ledger's units of work (reviewlm.io.ledger): a pass each, every model in it
PROMPT_UNIT, CORPUS_UNIT = "prompts", "corpus"


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_models(specs: list[str]) -> dict[str, str]:
    """`NAME=REF` pairs in order, names unique; a bare REF is named after its last path part.

    Names end up in file names of the report, so they are plain words: letters, digits, `_.-`.
    """
    models = {}
    for spec in specs:
        name, _, ref = spec.partition("=") if "=" in spec else (spec.rstrip("/").rsplit("/", 1)[-1], "", spec)
        if not name or not ref:
            raise UsageError(f"{{o}} takes NAME=REF, not {spec!r}", o="model")
        if not MODEL_NAME.fullmatch(name):
            raise UsageError(f"model name {name!r}: use letters, digits, '_', '.' or '-' (not first)")
        if name in models:
            raise UsageError(f"model name {name!r} given twice")
        models[name] = ref
    return models


def _quarantine(texts, columns: Columns, run: RunOptions, out: OutputDir, what: str) -> Quarantined:
    """Write the corpus rows no model can score (unparseable, or without a text) to quarantine/,
    in one pass before any model; return what it counted (recorded, for --resume). A corpus
    with no rows, or none usable, is a UsageError before any model loads."""
    ledger = out.tmp_uri(ledger_path())
    recorded = read_record(ledger, "quarantine")
    if recorded is None:
        if out.fs.exists(f"{out.tmp}/quarantine"):  # an interrupted pass
            out.fs.rm(f"{out.tmp}/quarantine", recursive=True)
        found = write_quarantine(read_reviews(texts, columns, run.split_bytes).map_batches(
            with_reasons, batch_format="pyarrow"), out.tmp_uri())
        write_record(ledger, "quarantine", found.to_json())
    else:
        found = Quarantined.from_json(recorded)
    found.check(what)
    return found


def _resumed(out: OutputDir, unit: str, routes: dict) -> Done:
    """What an interrupted run recorded for one unit of work (a model on the prompts or the
    corpus), its unrecorded files removed; nothing on a fresh run."""
    if not out.resumed:
        return Done()
    done = recover(out.tmp_uri(), list(routes), unit)
    if done.written:
        print(f"  resuming {unit}: {done.written:,} rows scored by {done.tasks} finished tasks are kept")
    return done


def _trained(models: dict[str, str]) -> dict[str, TrainResult]:
    """The train results of the models that are a `reviewlm train` output's model/ (REF is OUT/model)."""
    found = {}
    for name, ref in models.items():
        parent, _, leaf = ref.rstrip("/").rpartition("/")
        if leaf != "model" or ref in OFFLINE:
            continue
        fs, path = filesystem(parent or ".")
        if fs.exists(f"{path}/_SUCCESS") and fs.exists(f"{path}/metrics.json"):
            found[name] = TrainResult.from_json(read_json(f"{parent or '.'}/metrics.json"))
    return found


def _read(out: OutputDir, route: str, columns: list[str] | None = None, filters=None) -> pd.DataFrame:
    """The columns (and rows, by a pyarrow filter) of one output the driver needs: no more."""
    path = f"{out.tmp}/{route}"
    if not out.fs.exists(path):
        return pd.DataFrame()
    return pd.read_parquet(out.tmp_uri(route), columns=columns, filters=filters)


def _of_prompts(out: OutputDir, route: str, ids, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of `route` (prompts, masks, predictions) for the prompt indexes `ids`, read from
    the files whose ledger records name those indexes: a few files, however many were written
    (opening every file of a million prompts cost the driver some 50 MB)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    files = set()
    for record in markers(out.tmp_uri(ledger_path(PROMPT_UNIT))):
        spans = record["keys"].get("", [])
        if any(np.searchsorted(ids, start) < np.searchsorted(ids, end) for start, end in spans):
            files.update(f"{out.tmp}/{f}" for f in record["files"] if f.startswith(f"{route}/"))
    if not files:
        return pd.DataFrame()
    return pads.dataset(sorted(files), filesystem=arrow_filesystem(out.fs), format="parquet").to_table(
        columns=columns, filter=pc.field("prompt_index").isin(ids)).to_pandas()


def _shown_prompts(out: OutputDir, prompts: int, invalid: bool) -> pd.DataFrame:
    """The first valid prompts by index, as many as the report shows (one row each)."""
    from reviewlm.report.render import MAX_PROMPT_FIGURES, MAX_PROMPT_ROWS

    path, k = f"{out.tmp}/prompts", MAX_PROMPT_FIGURES + MAX_PROMPT_ROWS
    if not out.fs.exists(path):
        return pd.DataFrame()
    ids = np.arange(min(k, prompts))
    if invalid:  # the k smallest valid indexes, a batch at a time: the driver holds k of them
        ids = np.empty(0, dtype=np.int64)
        for batch in pads.dataset(path, filesystem=out.fs).to_batches(columns=["prompt_index"],
                                                                       filter=pc.field("error").is_null()):
            ids = np.unique(np.concatenate([ids, batch["prompt_index"].to_numpy()]))[:k]
    shown = _of_prompts(out, "prompts", ids, ["prompt_index", "prompt"])
    return shown.drop_duplicates("prompt_index").sort_values("prompt_index", ignore_index=True)


def score_models(models: dict[str, str], output: str, *, prompts: Prompts | list[str],
                 corpus: list[str] | None = None,
                 columns: Columns = Columns(), word_sets: dict, args: ScoreArgs = ScoreArgs(),
                 run: RunOptions = RunOptions()) -> ScoreResult:
    """Score every model on the prompts (and the corpus); write predictions, summary, report."""
    task, use_gpu = args.task, args.use_gpu
    prompts = prompts if isinstance(prompts, Prompts) else Prompts(items=tuple(prompts))
    if not models:
        raise UsageError("give at least one {o} NAME=REF", o="model")
    if task != "mlm" and not corpus:
        raise UsageError(f"the {task} task scores texts: give {{o}}", o="corpus")
    paths = {name: resolve_model(ref) for name, ref in models.items()}  # fails fast; actors resolve again
    classes = _class_names(paths, task) if task != "mlm" else {}
    texts = check_inputs(corpus, columns, delimiter=run.delimiter, encoding=run.encoding) if corpus else None
    trained = _trained(models) | ({"train_metrics": TrainResult.from_json(read_json(args.train_metrics))}
                                  if args.train_metrics else {})
    funnel = FilterStats.from_json(read_json(args.filter_stats)) if args.filter_stats else None
    out = OutputDir(output, "score", run.overwrite, ledger=True).prepare(
        run.resume, run.arguments, fingerprints(texts) + prompts.fingerprints())
    started, attempt = time.time(), uuid.uuid4().hex[:6]
    with out:
        init_ray(run)
        pool, corpus_pool = actor_pool(args.num_actors, use_gpu), actor_pool(args.num_actors, use_gpu, True)
        routes = {"predictions": S.PREDICTIONS, "masks": S.MASKS, "prompts": S.PROMPTS,
                  "corpus": S.CORPUS, "labels": S.LABELS}
        unscored = _quarantine(texts, columns, run, out, f"the corpus {corpus[0]}") if corpus else None
        sums: Counter = Counter()  # what every write task summed for summary.json
        refs = {name: portable_ref(ref) for name, ref in models.items()}
        names = ", ".join(models)
        done = _resumed(out, PROMPT_UNIT, routes) if task == "mlm" else Done()
        todo = len(prompts) - done.total if task == "mlm" else 0
        if todo:
            scorer = {"scorer": S.MaskScorer, "models": refs, "use_gpu": use_gpu, "top_k": args.top_k,
                      "word_sets": word_sets, "substitution_prompts": SUBSTITUTION_PROMPTS}
            actors = pool.limit(-(-todo // args.batch_size))  # no actor without a batch to score
            # every model writes a prompts row per prompt
            meter = Meter(f"scoring {names}", key="rows", unit="prompts", total=todo * len(models), scale=len(models))
            with progress(meter, bar=False) as tally:
                # zero-CPU as the read is, and no more tasks than actors (each would start a worker)
                skip_done(prompts.dataset(actors.size), done, Keys("prompt_index"), num_cpus=0,
                          compute=TaskPoolStrategy(size=actors.size)).map_batches(
                    S.EachModel, fn_constructor_kwargs=scorer, batch_size=args.batch_size, batch_format="numpy",
                    compute=ActorPoolStrategy(size=actors.size), **actors.resources,
                ).write_datasink(sink := RoutedParquetSink(
                    out.tmp_uri(), routes, sums=M.summary_sums, prefix=f"{PROMPT_UNIT}-{attempt}-", tally=tally,
                    tally_route="prompts", keys=Keys("prompt_index"), done=done, unit=PROMPT_UNIT), **WRITES)
            sums.update(sink.result["summed"])
        else:
            sums.update(done.summed)
        if corpus:
            done = _resumed(out, CORPUS_UNIT, routes)
            meter = Meter(f"scoring {names} on the corpus", key="bytes", unit="MB", scale=1e6,
                          total=sum(f.size for f in texts.files),
                          extra=lambda values, rate: f"{int(values.get('rows', 0)) // len(models):,} rows scored")
            with progress(meter, bar=False) as tally:
                reviews = skip_done(read_reviews(texts, columns, run.split_bytes, tally).map_batches(
                    with_text, batch_format="pyarrow"), done, RECORDS)
                scorer = {"scorer": S.CorpusScorer if task == "mlm" else S.ClassifyScorer, "models": refs,
                          "use_gpu": use_gpu} | ({"task": task} if task != "mlm" else {})
                reviews.map_batches(S.EachModel, fn_constructor_kwargs=scorer, batch_size=args.batch_size,
                                    batch_format="numpy", compute=ActorPoolStrategy(size=corpus_pool.size),
                                    **corpus_pool.resources,
                                    ).write_datasink(sink := RoutedParquetSink(
                    out.tmp_uri(), routes, sums=M.summary_sums, prefix=f"{CORPUS_UNIT}-{attempt}-", tally=tally,
                    tally_route="corpus" if task == "mlm" else "labels", keys=RECORDS, done=done,
                    unit=CORPUS_UNIT), **WRITES)
            sums.update(sink.result["summed"])
        if out.resumed:  # a worker of the interrupted run may outlive it, and write after this run began
            for unit in (PROMPT_UNIT, CORPUS_UNIT):
                recover(out.tmp_uri(), list(routes), unit)
        summary = _summary(out, models, paths, classes, task, word_sets, sums, len(prompts))
        if corpus:
            summary = replace(summary, corpus_quarantined=unscored.quarantined)
        from reviewlm.report.render import write_report

        shown = _shown_prompts(out, len(prompts), invalid=bool(summary.invalid_prompts))
        predictions = _of_prompts(out, "predictions", shown["prompt_index"]) if len(shown) else \
            pd.DataFrame()
        write_report(out, summary, predictions, shown, top_k=args.top_k, trained=trained, funnel=funnel)
        counts = {"models": len(models), "prompts": len(prompts), "reviews": summary.corpus_reviews or 0,
                  "quarantined": summary.corpus_quarantined or 0}
        out.commit(run.arguments, fingerprints(texts), counts, {"summary.json": summary.to_json()})
        return replace(summary, wall_time_s=round(time.time() - started, 2))


def _class_names(paths: dict[str, str], task: str) -> dict[str, list[str]]:
    """Each classifier's classes in id order, from its config."""
    from transformers import AutoConfig

    return {name: S.class_names(AutoConfig.from_pretrained(path), task) for name, path in paths.items()}


def _summary(out: OutputDir, models: dict, paths: dict, classes: dict, task: str, word_sets: dict,
             sums: Counter, prompts: int) -> ScoreResult:
    """summary.json, from what the write tasks summed (`sums`, score.metrics.summary_sums); the
    driver reads only the invalid prompts (when the sums say there are any) and the few prompts
    substitutions are shown for."""
    names = list(models)
    scored = {"prompts": M.prompt_summary(sums, names), "corpus": M.corpus_summary(sums, names),
              "labels": M.labels_summary(sums, classes, stars=task == "stars")}
    valid = scored["prompts"][names[0]].prompts_scored if names[0] in scored["prompts"] else 0
    invalid = _read(out, "prompts", ["model", "prompt_index", "prompt", "error"],
                    filters=[("model", "==", names[0]), ("error", "!=", "")]) \
        if task == "mlm" and valid < prompts else pd.DataFrame()
    invalid = tuple({"prompt_index": int(r.prompt_index), "prompt": r.prompt, "error": r.error}
                    for r in invalid.sort_values("prompt_index").itertuples()) if len(invalid) else ()
    reviews = [m.reviews for m in scored["corpus"].values()] + [m.rows for m in scored["labels"].values()]
    substitutions = {}
    if scored["prompts"] and len(names) > 1:
        from transformers import AutoTokenizer  # 2 s of imports a one-model run does without

        masks = _of_prompts(out, "masks", range(SUBSTITUTION_PROMPTS),
                            ["model", "prompt_index", "mask_index", "top_ids", "top_probs"])
        tok = AutoTokenizer.from_pretrained(paths[names[0]])
        substitutions = {f"{other} vs {names[0]}": M.substitutions(masks, names[0], other, lambda t: tok.decode([t]))
                         for other in names[1:]}
    return ScoreResult(
        task=task, word_sets=word_sets, invalid_prompts=invalid, substitutions=substitutions,
        models={name: ModelScores(ref=ref, path=paths[name], **{k: v.get(name) for k, v in scored.items()})
                for name, ref in models.items()},
        corpus_reviews=max(reviews) if reviews else None)
