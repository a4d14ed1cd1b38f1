"""Prompts to score: files, templates expanded over brands and products, or the defaults."""

from __future__ import annotations

import itertools

import yaml

from reviewlm import words as wordlists
from reviewlm.errors import UsageError
from reviewlm.io.storage import filesystem

MASK = "[MASK]"
REFERENCE_PROMPTS = [
    "Nike shoes are very [MASK].",
    "Nike athletic wear is known for being very [MASK].",
    "Nike [MASK] shoes are very comfortable.",
    "Trousers and hoodies made by [MASK] are not very expensive.",
    "Nike t-shirts are famous for being [MASK].",
]


def _read_text(uri: str, what: str) -> str:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {uri}: {exc}") from None


def read_prompts(uri: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    lines = [line.rstrip("\r") for line in _read_text(uri, "prompts").split("\n")]
    prompts = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"prompts file {uri} has no prompts")
    return prompts


def expand_templates(uri: str) -> list[str]:
    """Templates like `{brand} {product} are very [MASK].`, one per line, over the word lists.

    A line may use {brand} and {product}; the lists are the defaults unless the file is
    YAML with `templates:`, `brands:` and `products:`.
    """
    text = _read_text(uri, "templates")
    spec = yaml.safe_load(text) if uri.endswith((".yaml", ".yml")) else None
    if isinstance(spec, dict):
        templates = spec.get("templates")
        brands, products = spec.get("brands", wordlists.BRANDS), spec.get("products", wordlists.PRODUCTS)
    else:
        templates, brands, products = read_prompts(uri), wordlists.BRANDS, wordlists.PRODUCTS
    if not templates:
        raise UsageError(f"templates file {uri} has no templates")
    out = []
    for template in templates:
        for brand, product in itertools.product(brands, products):
            prompt = template.replace("{brand}", brand).replace("{product}", product)
            if prompt not in out:
                out.append(prompt)
    return out


def gather_prompts(prompts: str | None, templates: str | None, corpus: bool) -> list[str]:
    """The prompts of a score run: file and templates, else the five reference prompts."""
    out = (read_prompts(prompts) if prompts else []) + (expand_templates(templates) if templates else [])
    if not out and not corpus:
        out = list(REFERENCE_PROMPTS)
    return out


def load_word_sets(uri: str | None) -> dict[str, list[str]]:
    """`wanted` and `unwanted` words from YAML (default: the filter job's lists)."""
    sets = {"wanted": list(wordlists.WANTED), "unwanted": list(wordlists.UNWANTED)}
    if uri:
        data = yaml.safe_load(_read_text(uri, "word sets"))
        if not isinstance(data, dict) or not set(data) & set(sets) or set(data) - set(sets):
            raise UsageError(f"word sets file {uri} must be a mapping with wanted: and/or unwanted: lists")
        for key, value in data.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"word sets file {uri}: {key} must be a list of words")
            sets[key] = [v.lower() for v in value]
    return sets
