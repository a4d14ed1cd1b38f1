"""YAML recipes: filter pipelines as `all:`/`any:`/`not:` trees of named filters.

    all:
      - non_null
      - length: {min_words: 3, max_words: 400}
      - any: [brand, {keywords: {name: retailer, words: [amazon, zalando]}}]
      - not: unwanted
      - sentiment: {min_compound: 0.05}

A node is a filter name, a one-key mapping `{filter: {params}}`, or `all`/`any`/`not`.
`all`/`any`/`not` take an optional `name:` for the funnel. Errors name the file and line.
"""

from __future__ import annotations

import importlib.resources
import inspect

import yaml

from reviewlm.errors import UsageError
from reviewlm.filters import keywords
from reviewlm.filters.base import All, Any, Expr, Not
from reviewlm.filters.classifier import Classifier
from reviewlm.filters.dedup import Dedup
from reviewlm.filters.near_dedup import NearDedup
from reviewlm.filters.sentiment import Sentiment
from reviewlm.filters.text import Length, NonNull

FILTERS = {
    "non_null": NonNull,
    "length": Length,
    "sentiment": Sentiment,
    "keywords": keywords.Keywords,
    "brand": keywords.brand,
    "product": keywords.product,
    "wanted": keywords.wanted,
    "unwanted": keywords.unwanted,
    "dedup": Dedup,
    "near_dedup": NearDedup,
    "classifier": Classifier,
}


def default_recipe_text() -> str:
    return importlib.resources.files("reviewlm.filters").joinpath("recipes/default.yaml").read_text()


def load_recipe(path: str | None = None) -> Expr:
    """The expression in recipe file `path` (the built-in default when None)."""
    if path is None:
        return parse_recipe(default_recipe_text(), "default.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    return parse_recipe(text, path)


def parse_recipe(text: str, where: str = "recipe") -> Expr:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{where}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise UsageError(f"{where}: recipe is empty")
    return _node(root, where)


def _fail(node, where: str, message: str):
    raise UsageError(f"{where}:{node.start_mark.line + 1}: {message}")


def _value(node):
    return yaml.safe_load(yaml.serialize(node))


def _node(node, where: str) -> Expr:
    if isinstance(node, yaml.ScalarNode):
        return _filter(node, _value(node), {}, where)
    if not isinstance(node, yaml.MappingNode):
        _fail(node, where, "expected a filter name or a one-key mapping")
    entries = {k.value: (k, v) for k, v in node.value}
    name = _value(entries.pop("name")[1]) if "name" in entries else None
    if len(entries) != 1:
        _fail(node, where, f"expected one of all/any/not or a filter, got {sorted(entries) or 'nothing'}")
    key, (key_node, value) = next(iter(entries.items()))
    if key in ("all", "any"):
        if not isinstance(value, yaml.SequenceNode) or not value.value:
            _fail(value, where, f"'{key}' takes a non-empty list")
        children = [_node(child, where) for child in value.value]
        return (All if key == "all" else Any)(children, name)
    if key == "not":
        return Not(_node(value, where), name)
    params = _value(value) or {}
    if not isinstance(params, dict):
        _fail(value, where, f"parameters of '{key}' must be a mapping")
    if name is not None:
        params["name"] = name
    return _filter(key_node, key, params, where)


def _filter(node, key, params: dict, where: str) -> Expr:
    if key not in FILTERS:
        _fail(node, where, f"unknown filter {key!r} (known: {', '.join(sorted(FILTERS))})")
    factory = FILTERS[key]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        _fail(node, where, f"filter {key!r} has no parameter {unknown[0]!r} "
                           f"(it takes: {', '.join(accepted)})")
    try:
        return factory(**params)
    except (TypeError, ValueError) as exc:
        _fail(node, where, f"filter {key!r}: {exc}")
