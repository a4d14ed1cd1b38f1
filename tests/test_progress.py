"""Progress lines: done / total, elapsed, rate and ETA, from a tally read over time."""

from reviewlm.progress import Meter, duration


def test_a_progress_line_counts_the_rate_from_the_first_work_seen():
    meter = Meter("training", key="step", unit="steps", total=72,
                  extra=lambda v, rate: v and f"loss {v['loss']:.2f}, {rate * 32:.1f} samples/s", start=0.0)
    assert meter.line({}, 20.0) == "  training: 0/72 steps (0%) after 20 s"  # setting up: no rate yet
    meter.line({"step": 2, "loss": 9.0}, 30.0)  # work first seen: the rate counts from here
    assert meter.line({"step": 22, "loss": 5.0}, 40.0) == \
        "  training: 22/72 steps (31%) after 40 s, 2.0 steps/s, ETA 25 s; loss 5.00, 64.0 samples/s"
    assert meter.line({"step": 72, "loss": 1.5}, 65.0, final=True) == \
        "  training: 72/72 steps in 1 min 05 s, 2.0 steps/s; loss 1.50, 64.0 samples/s"


def test_a_stage_done_before_it_was_seen_and_one_without_a_total():
    fast = Meter("scoring v1", key="prompts", unit="prompts", total=5, start=0.0)
    assert fast.line({"prompts": 5}, 2.0, final=True) == "  scoring v1: 5/5 prompts in 2 s, 2.5 prompts/s"
    reading = Meter("filtering", key="bytes", unit="MB", scale=1e6, start=0.0,
                    extra=lambda values, rate: f"{values.get('rows', 0):,} rows")
    reading.line({"bytes": 1e6, "rows": 10}, 1.0)
    assert reading.line({"bytes": 61e6, "rows": 50_000}, 31.0) == \
        "  filtering: 61 MB after 31 s, 2.0 MB/s; 50,000 rows"
    small = Meter("scoring a, b on the corpus", key="bytes", unit="MB", scale=1e6, total=230_000, start=0.0)
    assert small.line({"bytes": 230_000}, 10.0, final=True) == \
        "  scoring a, b on the corpus: 0.23/0.23 MB in 10 s, 0.023 MB/s"  # not "0/0 MB"
    assert [duration(s) for s in (0.4, 59, 61, 3599, 7325)] == \
        ["0 s", "59 s", "1 min 01 s", "59 min 59 s", "2 h 02 min"]


def test_a_count_that_goes_back_is_told_and_its_rate_starts_again():
    meter = Meter("training", key="step", unit="steps", total=200, start=0.0)
    assert meter.setback({"step": 150}) is None
    meter.line({"step": 150}, 10.0)
    assert meter.setback({"step": 182}) is None and meter.line({"step": 182}, 26.0).endswith("2.0 steps/s, ETA 9 s")
    assert meter.setback({"step": 106}) == ("  training: back from 182 to 106 steps: restarted from the last "
                                            "checkpoint after a failure (Ray's logs say which)")
    assert meter.setback({"step": 107}) is None
    meter.line({"step": 107}, 40.0)  # a rate from the restart on, not across it
    assert meter.line({"step": 117}, 50.0) == "  training: 117/200 steps (58%) after 50 s, 1.0 steps/s, ETA 1 min 23 s"
