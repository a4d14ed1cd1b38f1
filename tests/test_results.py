"""Results are typed records that write the jobs' JSON files as they always were."""

import json

from reviewlm.metrics import confusion_matrix, star_metrics
from reviewlm.report.render import finding
from reviewlm.results import (
    Epoch,
    Evaluation,
    FilterStats,
    LabelScores,
    ModelScores,
    PipelineResult,
    PromptScores,
    ScoreResult,
    StepStats,
    TrainResult,
)

MLM_JSON = {  # metrics.json of a masked-LM run, as the train job wrote it before results were typed
    "task": "mlm", "model": "starter", "model_path": "/cache/starter",
    "rows": {"read": 200, "quarantined": 0, "eval": 20, "train": 180, "train_blocks": 40, "eval_blocks": 5},
    "warnings": ["this run makes only 4 optimizer steps"],
    "eval_loss_before": 11.2, "eval_accuracy_before": 0.01, "perplexity_before": 73130.4,
    "epochs": [{"epoch": 1, "step": 2, "train_loss": 6.1, "eval_loss": 2.0, "eval_accuracy": 0.5, "perplexity": 7.39,
                "samples_per_s": 31.5},
               {"epoch": 2, "step": 4, "train_loss": 1.9, "eval_loss": 2.1, "eval_accuracy": 0.49, "perplexity": 8.17,
                "samples_per_s": None}],
    "best_epoch": 1, "best": {"epoch": 1, "step": 2, "train_loss": 6.1, "eval_loss": 2.0, "eval_accuracy": 0.5,
                              "perplexity": 7.39},
    "restarts": [{"from_epoch": 1, "from_step": 2}], "streaming": False}


def test_a_train_result_writes_and_reads_metrics_json_unchanged():
    result = TrainResult.from_json(MLM_JSON)
    assert result.best.epoch == 1 and result.before.perplexity == 73130.4 and result.epochs[1].samples_per_s is None
    assert result.to_json() == MLM_JSON and json.loads(json.dumps(result.to_json())) == MLM_JSON


def test_a_classifier_result_has_no_perplexity_and_its_test_metrics():
    test = star_metrics(confusion_matrix([0, 2, 4, 4, 3], [0, 1, 4, 2, 3]))
    result = TrainResult(task="stars", model="starter", model_path="/m", rows={"read": 5, "train": 3}, warnings=(),
                         before=Evaluation(eval_loss=1.7, eval_accuracy=0.2),
                         epochs=(Epoch(epoch=1, step=3, train_loss=1.6, eval_loss=1.5, eval_accuracy=0.4),),
                         restarts=(), streaming=False, labels=("1", "2", "3", "4", "5"), classes={"1": 1, "2": 1},
                         class_weights=(), test=test, test_loss=1.2)
    saved = result.to_json()
    assert "perplexity_before" not in saved and "perplexity" not in saved["best"] and saved["class_weights"] is None
    assert saved["test"]["within_one_accuracy"] == 0.8 and saved["test"]["loss"] == 1.2
    assert saved["labels"] == ["1", "2", "3", "4", "5"] and TrainResult.from_json(saved) == result


def test_filter_stats_round_trip():
    stats = FilterStats(rows_read=10, kept=5, rejected=4, quarantined=1, mode="drop",
                        filters=(StepStats("non_null", 9, 7, 2), StepStats("brand", 7, 5, 2)), wall_time_s=1.0,
                        ray_start_s=0.5)
    assert FilterStats.from_json(json.loads(json.dumps(stats.to_json()))) == stats
    assert "would_keep" not in stats.to_json() and stats.totals == {"rows_read": 10, "kept": 5, "rejected": 4,
                                                                     "quarantined": 1}


def prompts(wanted: float, unwanted: float, vader: float = float("nan")) -> PromptScores:
    return PromptScores(prompts_scored=5, masks_scored=5, wanted_share=wanted, unwanted_share=unwanted,
                        wanted_mass=wanted / 2, unwanted_mass=unwanted / 2, median_first_wanted_rank=2.0,
                        mean_filled_vader=vader)


SCORES = ScoreResult(task="mlm", word_sets={"wanted": ["comfortable"], "unwanted": ["ugly"]},
                     models={"base": ModelScores("starter", "/c/starter", prompts=prompts(0.0, 0.0)),
                             "v1": ModelScores("out/train_v1/model", "/o/v1", prompts=prompts(0.42, 0.10)),
                             "v2": ModelScores("out/train_v2/model", "/o/v2", prompts=prompts(0.60, 0.0, 0.3))},
                     invalid_prompts=({"prompt_index": 5, "prompt": "no mask", "error": "no [MASK] in prompt"},))


def test_the_summary_keeps_its_layout_and_writes_nan_as_null():
    saved = SCORES.to_json()
    assert list(saved) == ["task", "word_sets", "models", "invalid_prompts"]
    assert saved["models"]["v2"] == {"ref": "out/train_v2/model", "path": "/o/v2", "prompts_scored": 5,
                                     "masks_scored": 5, "wanted_share": 0.6, "unwanted_share": 0.0,
                                     "wanted_mass": 0.3, "unwanted_mass": 0.0, "median_first_wanted_rank": 2.0,
                                     "mean_filled_vader": 0.3}
    assert saved["models"]["base"]["mean_filled_vader"] is None
    stars = ScoreResult(task="stars", word_sets={}, models={"s": ModelScores(
        "m", "/m", labels=LabelScores(rows=4, labels=("1", "2"), predicted_distribution={"1": 4, "2": 0}))})
    assert stars.to_json()["models"]["s"] == {"ref": "m", "path": "/m", "stars": {
        "rows": 4, "labels": ["1", "2"], "predicted_distribution": {"1": 4, "2": 0}}}
    for result in (SCORES, stars):  # what pipeline --resume reads back from a finished score stage
        back = ScoreResult.from_json(json.loads(json.dumps(result.to_json())))
        assert back.to_json() == result.to_json() and back.models.keys() == result.models.keys()
    assert back.models["s"].labels == stars.models["s"].labels


def test_the_report_opens_with_its_finding():
    v1 = TrainResult.from_json({**MLM_JSON, "rows": {**MLM_JSON["rows"], "train": 18000}})
    v2 = TrainResult.from_json({**MLM_JSON, "rows": {**MLM_JSON["rows"], "train": 6247}})
    text = finding(SCORES, {"v1": v1, "v2": v2}, top_k=10)
    assert text == ("v2 fills the prompts with wanted words most: 60% of its top 10 fills are wanted words, "
                    "0% unwanted, against base 0% (+60 points), 0% unwanted; v1 42% (+18 points), 10% unwanted. "
                    "Perplexity on each model's own held-out split: v1 7.39 (from 73,130; tuned on 18,000 "
                    "reviews); v2 7.39 (from 73,130; tuned on 6,247 reviews).")
    assert finding(ScoreResult(task="stars", word_sets={}, models={}), {}, 10) is None


def test_pipeline_json_has_the_figures_it_always_had():
    stats = FilterStats(rows_read=10, kept=5, rejected=5, quarantined=0, mode="drop", filters=(), wall_time_s=1,
                        ray_start_s=1)
    train = TrainResult.from_json(MLM_JSON)
    saved = PipelineResult(filter=stats, train={"v1": train, "v2": train}, score=SCORES, report="out/score/report.html",
                           wall_time_s=12.5).to_json()
    assert saved["filter"] == {"rows_read": 10, "kept": 5, "rejected": 5, "quarantined": 0}
    assert saved["train"]["v2"] == {"perplexity_before": 73130.4, "perplexity_after": 7.39, "best_epoch": 1, "steps": 4}
    assert saved["score"]["v1"] == {"wanted_share": 0.42, "unwanted_share": 0.1, "wanted_mass": 0.21,
                                    "unwanted_mass": 0.05, "mean_filled_vader": None}
