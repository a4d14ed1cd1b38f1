"""The docs cannot drift: every flag of every job is on its page, the README stays a front door."""

import argparse
import re
from pathlib import Path

from reviewlm.cli import build_parser

ROOT = Path(__file__).parents[1]
PAGES = {"filter": "filter.md", "train": "train.md", "score": "score.md", "pipeline": "pipeline.md",
         "demo": "pipeline.md", "synth": "synth.md"}


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
