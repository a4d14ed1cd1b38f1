"""The reference study as one job: filter -> fine-tune v1 (all) and v2 (kept) -> score -> report.

v1 and v2 get the same training budget (epochs and steps), so the report compares what the
data did, not how long each model trained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from reviewlm.errors import UsageError
from reviewlm.filters.recipe import load_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.io.layout import Columns
from reviewlm.io.storage import OutputDir
from reviewlm.options import RunOptions
from reviewlm.results import PipelineResult
from reviewlm.score.job import ScoreArgs, score_models
from reviewlm.score.prompts import REFERENCE_PROMPTS, load_word_sets
from reviewlm.synth import write_synth
from reviewlm.train.job import TrainArgs, train_model

# The demo's offline settings: a synthesized corpus, the starter model, a budget for 2 cores.
DEMO_ROWS = 20_000
DEMO_TRAIN = TrainArgs(model="starter", epochs=50, max_steps=72, batch_size=16, lr=3e-4, chunk_size=64,
                       eval_fraction=0.1, num_workers=2)


@dataclass
class PipelineArgs:
    inputs: list[str] = field(default_factory=list)
    recipe: str | None = None
    columns: Columns = Columns()
    train: TrainArgs = field(default_factory=TrainArgs)
    prompts: list[str] = field(default_factory=lambda: list(REFERENCE_PROMPTS))


def run_pipeline(output: str, args: PipelineArgs, *, synth_rows: int | None = None, run: RunOptions = RunOptions(),
                 log=print) -> PipelineResult:
    """Run every stage into `output/{corpus,filter,train_v1,train_v2,score}`; return the summary."""
    base = output.rstrip("/")
    recipe = load_recipe(args.recipe)
    if not args.inputs and not synth_rows:
        raise UsageError("give INPUT files, or {o} to synthesize a corpus", o="demo")
    out = OutputDir(base, "pipeline", run.overwrite).prepare()
    stage = replace(run, overwrite=False)  # each stage writes anew, read and run as the pipeline was told
    started, stages = time.time(), 5 + bool(synth_rows)
    step = iter(range(1, stages + 1))
    with out:
        inputs = args.inputs
        if synth_rows:
            log(f"[{next(step)}/{stages}] synthesizing {synth_rows} template reviews -> {base}/corpus")
            write_synth(f"{base}/corpus", synth_rows, seed=0)
            inputs = [f"{base}/corpus"]
        log(f"[{next(step)}/{stages}] filtering -> {base}/filter")
        stats = filter_reviews(inputs, f"{base}/filter", recipe=recipe, columns=args.columns, run=stage)
        log(f"  kept {stats.kept} of {stats.rows_read} reviews")
        trained = {}
        for name, data in (("v1", inputs), ("v2", [f"{base}/filter/kept"])):
            what = "all reviews" if name == "v1" else "the kept reviews"
            log(f"[{next(step)}/{stages}] fine-tuning {name} on {what} ({args.train.model_name}) "
                f"-> {base}/train_{name}")
            trained[name] = train_model(data, f"{base}/train_{name}", args.train, columns=args.columns, run=stage)
            best = trained[name].best
            log(f"  perplexity {trained[name].before.perplexity:.1f} -> {best.perplexity:.2f} after {best.step} steps")
        log(f"[{next(step)}/{stages}] scoring base, v1 and v2 -> {base}/score")
        scores = score_models({"base": args.train.model_name, "v1": f"{base}/train_v1/model",
                               "v2": f"{base}/train_v2/model"},
                              f"{base}/score", prompts=args.prompts, word_sets=load_word_sets(None),
                              args=ScoreArgs(filter_stats=f"{base}/filter/stats.json"), run=stage)
        result = PipelineResult(filter=stats, train=trained, score=scores, report=f"{base}/score/report.html",
                                wall_time_s=round(time.time() - started, 1))
        log(f"[{next(step)}/{stages}] done in {result.wall_time_s:.0f} s")
        out.commit(run.arguments, [], {"stages": stages}, {"pipeline.json": result.to_json()})
        return result
