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
from reviewlm.io.readers import check_inputs
from reviewlm.io.storage import OutputDir, comparable, filesystem, fingerprints, read_json, read_success
from reviewlm.options import RunOptions
from reviewlm.results import FilterStats, PipelineResult, ScoreResult, TrainResult
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
    names = ("corpus",) * bool(synth_rows) + ("filter", "train_v1", "train_v2", "score")
    given = check_inputs(args.inputs, args.columns, delimiter=run.delimiter, encoding=run.encoding) \
        if args.inputs else None
    out = OutputDir(base, "pipeline", run.overwrite, in_place=names).prepare(run.resume, run.arguments,
                                                                             fingerprints(given))
    stage = Stages(run, args, log)
    started, stages = time.time(), 5 + bool(synth_rows)
    step = iter(range(1, stages + 1))
    with out:
        inputs = args.inputs
        if synth_rows:
            log(f"[{next(step)}/{stages}] synthesizing {synth_rows} template reviews -> {base}/corpus")
            if stage.runs(f"{base}/corpus"):
                write_synth(f"{base}/corpus", synth_rows, seed=0, run=stage.options)
            inputs = [f"{base}/corpus"]
        log(f"[{next(step)}/{stages}] filtering -> {base}/filter")
        if stage.runs(f"{base}/filter", inputs):
            stats = filter_reviews(inputs, f"{base}/filter", recipe=recipe, columns=args.columns, run=stage.options)
        else:
            stats = FilterStats.from_json(read_json(f"{base}/filter/stats.json"))
        log(f"  kept {stats.kept} of {stats.rows_read} reviews")
        trained = {}
        for name, data in (("v1", inputs), ("v2", [f"{base}/filter/kept"])):
            what = "all reviews" if name == "v1" else "the kept reviews"
            log(f"[{next(step)}/{stages}] fine-tuning {name} on {what} ({args.train.model_name}) "
                f"-> {base}/train_{name}")
            if stage.runs(f"{base}/train_{name}", data):
                trained[name] = train_model(data, f"{base}/train_{name}", args.train, columns=args.columns,
                                            run=stage.options)
            else:
                trained[name] = TrainResult.from_json(read_json(f"{base}/train_{name}/metrics.json"))
            best = trained[name].best
            log(f"  perplexity {trained[name].before.perplexity:.1f} -> {best.perplexity:.2f} after {best.step} steps")
        log(f"[{next(step)}/{stages}] scoring base, v1 and v2 -> {base}/score")
        if stage.runs(f"{base}/score"):
            scores = score_models({"base": args.train.model_name, "v1": f"{base}/train_v1/model",
                                   "v2": f"{base}/train_v2/model"},
                                  f"{base}/score", prompts=args.prompts, word_sets=load_word_sets(None),
                                  args=ScoreArgs(filter_stats=f"{base}/filter/stats.json"), run=stage.options)
        else:
            scores = ScoreResult.from_json(read_json(f"{base}/score/summary.json"))
        result = PipelineResult(filter=stats, train=trained, score=scores, report=f"{base}/score/report.html",
                                wall_time_s=round(time.time() - started, 1))
        log(f"[{next(step)}/{stages}] done in {result.wall_time_s:.0f} s")
        out.commit(run.arguments, fingerprints(given), {"stages": stages}, {"pipeline.json": result.to_json()})
        return result


class Stages:
    """How each stage runs. Plainly, as the pipeline was told (an overwrite replaces each
    stage's output). With `--resume`: a stage finished with the pipeline's arguments and the
    same inputs is reused while every stage before it was; an interrupted one is resumed; any
    other runs anew and replaces what is there."""

    def __init__(self, run: RunOptions, args: PipelineArgs, log):
        self.run, self.args, self.log = run, args, log
        self.reusing, self.options = run.resume, run

    def runs(self, uri: str, inputs: list[str] | None = None) -> bool:
        """False when the finished output at `uri` is reused; else True, with `options` set."""
        if not self.run.resume:
            return True
        fs, path = filesystem(uri)
        finished = fs.exists(f"{path}/_SUCCESS")
        if self.reusing and finished and self._same(read_success(uri), inputs):
            self.log(f"  reusing {uri}: finished with the same arguments and inputs")
            return False
        self.reusing = False
        interrupted = fs.exists(path) and OutputDir(uri, "").interrupted() is not None  # or a killed overwrite
        if interrupted:
            self.log(f"  resuming the interrupted run in {uri}")
        self.options = replace(self.run, resume=interrupted, overwrite=True)
        return True

    def _same(self, manifest: dict, inputs: list[str] | None) -> bool:
        if comparable(manifest["arguments"]) != comparable(self.run.arguments):
            return False
        return not inputs or manifest["inputs"] == fingerprints(check_inputs(
            inputs, self.args.columns, delimiter=self.run.delimiter, encoding=self.run.encoding))
