"""The filter stage: apply a recipe to review batches, count the funnel, route every row.

Every parsed row is evaluated step by step along the recipe's top-level conjuncts (the
funnel). In `drop` mode a step sees only the rows that passed the steps before it, like a
DataTrove pipeline; in `annotate` mode every step sees every row. A rejected row records
the first step that dropped it (`dropped_by`) and every score computed for it.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import ActorPoolStrategy

from reviewlm.errors import UsageError
from reviewlm.filters.base import Expr, Filter, scatter
from reviewlm.filters.classifier import ALIVE, Classifier, RowClassifier
from reviewlm.io.layout import QUARANTINE, QUARANTINE_SCHEMA, ROW_FIELDS, Columns
from reviewlm.io.ledger import PIECES, RECORDS, Done, Keys, ledger_path, recover, skip_done, unread
from reviewlm.io.pieces import plan_pieces
from reviewlm.io.quarantine import KIND, Quarantined, error_kind
from reviewlm.io.readers import ReviewDatasource, check_inputs, read_source
from reviewlm.io.sink import RoutedParquetSink
from reviewlm.io.storage import OutputDir, fingerprints
from reviewlm.options import RunOptions
from reviewlm.progress import Meter, progress
from reviewlm.results import FilterStats, StepStats
from reviewlm.runtime import actor_pool, init_ray

DROPPED = "_dropped_by"
# Rows per call of a GPU classifier actor (Ray Data needs a batch size for a GPU map; the
# actor sorts them by length and cuts them into micro-batches)
GPU_CALL_ROWS = 4096
MIN_PIECE_BYTES, FUSED_PIECE_BYTES = 1 << 16, 8 << 20


def score_fields(expr: Expr) -> list[pa.Field]:
    seen, out = set(), []
    for leaf in expr.leaves():
        for f in leaf.score_fields:
            if f.name not in seen:
                seen.add(f.name)
                out.append(f)
    return out


def route_batch(batch: pa.Table, expr: Expr, mode: str, first: int = 0, last: int | None = None) -> pa.Table:
    """Add score columns, `dropped_by` and `_route` (kept/rejected/quarantine) to a batch.

    With `first`/`last`, only those funnel steps: what the steps so far decided travels in
    the batch (`ALIVE`, `DROPPED` and the score columns) to the next map, so that a model
    between two maps sees only the rows still alive (`filters.classifier`)."""
    steps = expr.conjuncts()
    last = len(steps) if last is None else last
    n = batch.num_rows
    parsed = pc.is_null(batch["_error"]).to_numpy(zero_copy_only=False)
    if ALIVE in batch.column_names:
        alive = batch[ALIVE].to_numpy(zero_copy_only=False).copy()
        dropped_by = np.array(batch[DROPPED].to_pylist(), dtype=object)
        batch = batch.drop_columns([ALIVE, DROPPED])
    else:
        alive, dropped_by = parsed.copy(), np.full(n, None, dtype=object)
    for step in steps[first:last]:
        rows = np.flatnonzero(alive if mode == "drop" else parsed)
        if len(rows) == 0:
            continue
        keep, step_scores = step.evaluate(batch.take(rows))
        for name, values in step_scores.items():
            column = scatter(pa.array(values) if not isinstance(values, pa.Array) else values, rows, n)
            at = batch.schema.get_field_index(name)
            batch = batch.set_column(at, name, column) if at >= 0 else batch.append_column(name, column)
        failing = rows[~keep]
        newly = failing[alive[failing]]
        dropped_by[newly] = step.name
        alive[newly] = False
    if last < len(steps):
        return batch.append_column(ALIVE, pa.array(alive)).append_column(DROPPED, pa.array(dropped_by, pa.string()))
    fields = score_fields(expr)
    scores = {f.name: batch[f.name] for f in fields if f.name in batch.column_names}
    batch = batch.drop_columns(list(scores))
    for f in fields:
        batch = batch.append_column(f, scores[f.name].cast(f.type) if f.name in scores else pa.nulls(n, f.type))
    route = np.where(~parsed, "quarantine", np.where(alive | (mode == "annotate"), "kept", "rejected"))
    batch = batch.append_column("dropped_by", pa.array(dropped_by, pa.string()))
    if mode == "annotate":
        batch = batch.append_column("keep", pa.array(alive))
    batch = batch.rename_columns({k: v for k, v in QUARANTINE.items() if k != v})
    return batch.append_column(KIND, error_kind(batch["error"])).append_column("_route", pa.array(route))


def route(ds, expr: Expr, mode: str, models: dict[str, str], use_gpu: bool = False, num_actors: int | None = None):
    """The funnel over a dataset: its steps in maps and, before a step with a classifier, the
    classifier's actor pool (on the rows still alive; every parsed row in annotate mode).
    `models` holds each classifier's checked model reference by its name."""
    first, pooled = 0, False
    for at, step in enumerate(expr.conjuncts()):
        classifiers = [leaf for leaf in step.leaves() if isinstance(leaf, Classifier)]
        if not classifiers:
            continue
        if at > first:
            ds = ds.map_batches(route_batch, fn_kwargs={"expr": expr, "mode": mode, "first": first, "last": at},
                                batch_format="pyarrow", batch_size=None)
        for leaf in classifiers:
            pool = actor_pool(num_actors, use_gpu)
            ds = ds.map_batches(RowClassifier, fn_constructor_args=(leaf, models[leaf.name], use_gpu, mode),
                                batch_format="pyarrow", batch_size=GPU_CALL_ROWS if use_gpu else None,
                                compute=ActorPoolStrategy(size=pool.size),
                                **pool.resources)
        first, pooled = at, True
    # One batch per block (at most DataContext.target_max_block_size): a batch_size would
    # keep Ray Data from fusing the read into this step and the write.
    return ds.map_batches(route_batch, fn_kwargs={"expr": expr, "mode": mode, "first": first},
                          batch_format="pyarrow", batch_size=None, **(after_actors() if pooled else {}))


def after_actors() -> dict:
    """Ray Data arguments of the steps after a classifier's actors and of the write: no CPU, as
    the actors hold every CPU (tasks waiting for one would keep every labelled block in the
    object store to the end), and one task per CPU at a time (each runs in a worker process)."""
    import ray

    return {"num_cpus": 0, "concurrency": max(1, int(ray.cluster_resources().get("CPU", 1)))}


def output_schemas(expr: Expr, mode: str) -> dict[str, pa.Schema]:
    scores = score_fields(expr)
    if mode == "annotate":
        kept = pa.schema(ROW_FIELDS + scores + [pa.field("keep", pa.bool_()), pa.field("dropped_by", pa.string())])
        return {"kept": kept, "quarantine": QUARANTINE_SCHEMA}
    return {"kept": pa.schema(ROW_FIELDS + scores),
            "rejected": pa.schema(ROW_FIELDS + scores + [pa.field("dropped_by", pa.string())]),
            "quarantine": QUARANTINE_SCHEMA}


def funnel(expr: Expr, parsed: int, dropped: dict[str, int]) -> tuple[StepStats, ...]:
    """The funnel in filter order, from the dropped-by counts."""
    out, seen = [], parsed
    for step in expr.conjuncts():
        d = dropped.get(step.name, 0)
        out.append(StepStats(step.name, seen, seen - d, d))
        seen -= d
    return tuple(out)


def filter_reviews(inputs: list[str], output: str, *, recipe: Expr, columns: Columns = Columns(),
                   fmt: str | None = None, mode: str = "drop", run: RunOptions = RunOptions(),
                   use_gpu: bool = False, num_actors: int | None = None) -> FilterStats:
    """Run the filter job; return its stats (stats.json).

    Inputs, output and the classifiers' models are checked before Ray starts; then Ray is
    joined or started (see `init_ray`) unless the caller already did. `use_gpu` gives each
    classifier actor a GPU; `num_actors` sets their number (default: one per CPU, or GPU).
    """
    if mode not in ("drop", "annotate"):
        raise UsageError(f"{{o}} must be drop or annotate, not {mode!r}", o="mode")
    names = [s.name for s in recipe.conjuncts()]
    if len(set(names)) != len(names):
        raise UsageError(f"recipe steps need distinct names for the funnel: {names}")
    source = check_inputs(inputs, columns, fmt, delimiter=run.delimiter, encoding=run.encoding)
    models = {leaf.name: leaf.check() for leaf in recipe.leaves() if isinstance(leaf, Classifier)}
    out = OutputDir(output, "filter", run.overwrite, ledger=True).prepare(run.resume, run.arguments,
                                                                          fingerprints(source))
    with out:
        started = time.time()
        init_ray(run)
        ray_start = time.time() - started
        routes = output_schemas(recipe, mode)
        done = recover(out.tmp_uri(), list(routes)) if out.resumed else Done()
        if out.resumed:
            print(f"  resuming: {done.written:,} rows written by {done.tasks} finished tasks are kept")
        # with no filter that sees every row first, a resumed run does not read the pieces
        # the killed one read and wrote whole (each read task records what it yielded)
        streamed = all(type(leaf).prepare is Filter.prepare for leaf in recipe.leaves())
        record = f"{out.tmp_uri()}/{ledger_path(PIECES)}" if streamed else None
        pieces = plan_pieces(source, piece_bytes(source, run.split_bytes, bool(models) and not use_gpu, num_actors))
        if out.resumed and streamed:
            planned, pieces = len(pieces), unread(pieces, done, record)
            print(f"  resuming: {planned - len(pieces)} of {planned} pieces read and written whole are not read again")
        meter = Meter("filtering", key="bytes", unit="MB", scale=1e6, total=sum(p.size for p in pieces),
                      extra=lambda values, rate: f"{int(values.get('rows', 0)):,} rows written")
        with progress(meter, bar=False) as tally:
            ds = read_source(ReviewDatasource(source, pieces, columns, tally, record))
            for leaf in {(type(leaf), leaf.name): leaf for leaf in recipe.leaves()}.values():
                ds = leaf.prepare(ds, source, len(pieces))
            ds = skip_done(ds, done, RECORDS)  # after dedup, which sees every row
            ds = route(ds, recipe, mode, models, use_gpu, num_actors)
            sink = RoutedParquetSink(out.tmp_uri(), routes, count_columns=("dropped_by", KIND), tally=tally,
                                     prefix=f"{uuid.uuid4().hex[:6]}-", keys=Keys("row", "source", "_end"), done=done)
            after = after_actors() if models else {}
            ds.write_datasink(sink, ray_remote_args={"num_cpus": after["num_cpus"]} if after else None,
                              concurrency=after.get("concurrency"))
        if out.resumed:  # a worker of the interrupted run may outlive it, and write after this run began
            recover(out.tmp_uri(), list(routes))
        stats = _stats(recipe, mode, sink.result, time.time() - started, ray_start)
        if stats.rows_read == 0:
            raise UsageError(f"input has no rows: {', '.join(f.uri for f in source.files[:3])}")
        Quarantined(stats.rows_read, sink.result["counted"][KIND]).check(
            f"{source.files[0].uri}{' and the other inputs' if len(source.files) > 1 else ''}")
        out.commit(run.arguments, fingerprints(source), stats.totals, {"stats.json": stats.to_json()})
        return stats


def piece_bytes(source, split: int, fused_classifier: bool, num_actors: int | None) -> int:
    """The read piece size: `split`, or less when a CPU classifier runs in the recipe. Ray Data
    fuses a read piece and the steps before the classifier into one actor call, so a small input
    is cut into at least two pieces per actor (none under MIN_PIECE_BYTES) to reach them all,
    and no piece is over FUSED_PIECE_BYTES, so that rows are written (and recorded for a resume)
    every few minutes of an actor's work rather than once per 64 MB."""
    if not fused_classifier:
        return split
    actors = actor_pool(num_actors, False).size
    most = min(split, FUSED_PIECE_BYTES)
    return max(MIN_PIECE_BYTES, min(most, sum(f.size for f in source.files) // (2 * actors)))


def _stats(expr: Expr, mode: str, result: dict, wall: float, ray_start: float) -> FilterStats:
    rows, dropped = result["rows"], result["counted"]["dropped_by"]
    kept, rejected = rows.get("kept", 0), rows.get("rejected", 0)
    parsed = kept + rejected
    return FilterStats(rows_read=parsed + rows.get("quarantine", 0), kept=kept, rejected=rejected,
                       quarantined=rows.get("quarantine", 0), mode=mode, filters=funnel(expr, parsed, dropped),
                       wall_time_s=round(wall, 3), ray_start_s=round(ray_start, 3),
                       would_keep=parsed - sum(dropped.values()) if mode == "annotate" else None)
