"""Whole-word, case-insensitive keyword and phrase filters (brand, product, word lists)."""

import re

import pyarrow as pa
import pyarrow.compute as pc

from reviewlm import words as wordlists
from reviewlm.filters.base import Filter


def word_pattern(terms: list[str]) -> str:
    """An RE2 pattern matching any term as a whole word; spaces in phrases match any gap."""
    if not terms:
        raise ValueError("a keyword filter needs at least one word")
    alternatives = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
    body = "|".join(r"\s+".join(re.escape(part) for part in t.split()) for t in alternatives)
    return rf"(?i)\b(?P<match>{body})\b"


class Keywords(Filter):
    """Keep rows whose text mentions one of `words` (whole words, any case).

    Score column `<name>_match`: the first term found, lower-cased (null when none).
    """

    def __init__(self, words: list[str], name: str = "keywords"):
        self.name, self.words = name, list(words)
        self.pattern = word_pattern(self.words)
        self.score_fields = [pa.field(f"{name}_match", pa.string())]

    def apply(self, batch):
        found = pc.struct_field(pc.extract_regex(batch["text"], pattern=self.pattern), "match")
        found = pc.utf8_lower(pc.replace_substring_regex(found, pattern=r"\s+", replacement=" "))
        keep = pc.is_valid(found).to_numpy(zero_copy_only=False)
        return keep, {f"{self.name}_match": pa.array(found)}


def brand(words: list[str] | None = None, name: str = "brand") -> Keywords:
    return Keywords(words or wordlists.BRANDS, name)


def product(words: list[str] | None = None, name: str = "product") -> Keywords:
    return Keywords(words or wordlists.PRODUCTS, name)


def wanted(words: list[str] | None = None, name: str = "wanted") -> Keywords:
    return Keywords(words or wordlists.WANTED, name)


def unwanted(words: list[str] | None = None, name: str = "unwanted") -> Keywords:
    return Keywords(words or wordlists.UNWANTED, name)
