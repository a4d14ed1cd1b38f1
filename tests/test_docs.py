"""The docs cannot drift: every flag of every job is on its page, the README stays a front door."""

import argparse
import re
from pathlib import Path

from reviewlm.cli import build_parser

ROOT = Path(__file__).parents[1]
PAGES = {"filter": "filter.md", "train": "train.md", "score": "score.md", "pipeline": "pipeline.md",
         "demo": "pipeline.md", "synth": "synth.md", "recommend": "recommend.md"}


def test_every_flag_of_every_job_is_on_its_docs_page():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == set(PAGES)
    for command, parser in commands.items():
        page = (ROOT / "docs" / PAGES[command]).read_text()
        flags = {o for action in parser._actions for o in action.option_strings if o.startswith("--")} - {"--help"}
        missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", page))
        assert not missing, f"docs/{PAGES[command]} lacks {missing}"


def test_the_readme_is_a_short_front_door_with_the_two_commands_first():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    setup, tests = readme.index("\npython3 -m venv .venv"), readme.index("\n.venv/bin/python -m pytest")
    assert setup < tests < readme.index("reviewlm filter")
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]*)\)", readme):
        assert (ROOT / link).exists(), link


def test_every_number_a_help_text_states_is_what_the_code_does():
    """A number written into a help text (not the generated "(default: …)") is checked here
    against the constant or behaviour it states; a new one fails until it is added."""
    from reviewlm.metrics import STARS
    from reviewlm.options import MATERIALIZED, PROMPTS_PER_PIECE, STREAM_EVAL_BLOCKS, TrainArgs
    from reviewlm.pipeline import DEMO_ROWS

    checks = {
        "1-5": lambda: (STARS[0], STARS[-1]) == ("1", "5"),
        "0": lambda: not TrainArgs(whole_word_mask=0).whole_word and TrainArgs(whole_word_mask=0).mask_probability
        == TrainArgs().mlm_probability,
        "10,000": lambda: STREAM_EVAL_BLOCKS == 10_000,
        "1/8": lambda: MATERIALIZED == 8,
        "4,096": lambda: PROMPTS_PER_PIECE == 4096,
        "20000": lambda: DEMO_ROWS == 20_000,
        "5e-5": lambda: TrainArgs(task="mlm").learning_rate == 5e-5,
        "2e-4": lambda: TrainArgs(task="stars").learning_rate == TrainArgs(task="classify").learning_rate == 2e-4,
    }
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    found = set()
    for command, parser in commands.items():
        for action in parser._actions:
            text = (action.help or "").removesuffix(f" (default: {action.default})")  # generated from the default
            for number in re.findall(r"(?<![\w.-])\d[\d,]*(?:[/-]\d+|e-\d+)?", text):
                assert number in checks, f"{command} {action.option_strings}: {number!r} in {text!r} is unchecked"
                found.add(number)
    assert found == set(checks)
    assert all(check() for check in checks.values())
