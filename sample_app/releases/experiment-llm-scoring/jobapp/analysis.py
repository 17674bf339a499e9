"""Scores how well a job posting matches an applicant's profile.

The model is a keyword overlap: the share of the profile's keywords found in the posting.
It is deterministic, so /api/health can score a fixed canary and compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from jobapp.settings import Settings

# Experiment: the name the LLM-backed scorer will report; scoring is still the keyword overlap.
MODEL = "llm-v0"
# fmt: off
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "i", "in", "is",
    "it", "of", "on", "or", "the", "to", "with", "we", "you", "your", "our",
})
# fmt: on
CANARY_TEXT = "Senior Python developer: PostgreSQL, Docker and REST APIs."
CANARY_PROFILE = "python postgresql kubernetes"
CANARY_SCORE = 67

_TOKEN = re.compile(r"[a-z0-9][a-z0-9+#.]*[a-z0-9+#]|[a-z0-9]")


class AnalysisError(RuntimeError):
    """The scoring model gave an answer it should not have."""


@dataclass(frozen=True)
class Match:
    score: int
    matched: tuple[str, ...]
    model: str


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def keywords(profile: str) -> list[str]:
    """The profile's distinct keywords, in the order given."""
    seen: dict[str, None] = {}
    for word in _TOKEN.findall(profile.lower()):
        if word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def score_text(text: str, profile: str) -> Match:
    wanted = keywords(profile)
    if not wanted:
        return Match(score=0, matched=(), model=MODEL)
    present = tokens(text)
    matched = tuple(word for word in wanted if word in present)
    return Match(score=round(100 * len(matched) / len(wanted)), matched=matched, model=MODEL)


class Scorer(Protocol):
    def score(self, text: str, profile: str) -> Match: ...


class KeywordScorer:
    def score(self, text: str, profile: str) -> Match:
        return score_text(text, profile)


def build_scorer(settings: Settings) -> Scorer:
    return KeywordScorer()


def check_canary(scorer: Scorer) -> str:
    result = scorer.score(CANARY_TEXT, CANARY_PROFILE)
    if result.score != CANARY_SCORE:
        raise AnalysisError(f"canary scored {result.score}, expected {CANARY_SCORE}")
    return f"{result.model} scored the canary {result.score}"
