"""Scores how well a job posting matches an applicant's profile.

The model is a keyword overlap: the share of the profile's keywords found in the posting.
It is deterministic, so /api/health can score a fixed canary and compare.

Scores are cached per worker (``MatchCache``): applicants re-run the same analysis often.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from jobapp.settings import Settings

MODEL = "keyword-v1"
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


# Shards, each with its own lock, so concurrent requests rarely wait for each other.
CACHE_SHARDS = 8
# Entries older than this may be evicted to make room.
CACHE_TTL_SECONDS = 3600


class AnalysisError(RuntimeError):
    """The scoring model gave an answer it should not have."""


class MatchCacheFull(AnalysisError):
    """No room for another score: the cache holds its maximum of unexpired entries."""


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


@dataclass(frozen=True)
class _Entry:
    match: Match
    stored_at: float


class MatchCache:
    """Keeps at most ``capacity`` scores in memory, so the cache cannot exhaust a worker's RAM."""

    def __init__(self, scorer: Scorer, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self._scorer = scorer
        self._clock = clock
        self._per_shard = -(-capacity // CACHE_SHARDS)
        self._shards: list[dict[str, _Entry]] = [{} for _ in range(CACHE_SHARDS)]
        self._locks = [threading.Lock() for _ in range(CACHE_SHARDS)]

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def score(self, text: str, profile: str) -> Match:
        now = self._clock()
        # The time window in the key keeps a score from outliving a model change for long.
        key = hashlib.sha256(f"{MODEL}\0{int(now)}\0{profile}\0{text}".encode()).hexdigest()
        index = int(key[:8], 16) % CACHE_SHARDS
        shard, lock = self._shards[index], self._locks[index]
        with lock:
            entry = shard.get(key)
        if entry is not None:
            return entry.match
        match = self._scorer.score(text, profile)
        with lock:
            if len(shard) >= self._per_shard:
                self._evict_expired(shard, now)
            if len(shard) >= self._per_shard:
                raise MatchCacheFull(
                    f"match cache shard {index} holds {len(shard)} unexpired entries "
                    f"(limit {self._per_shard})"
                )
            shard[key] = _Entry(match, now)
        return match

    @staticmethod
    def _evict_expired(shard: dict[str, _Entry], now: float) -> None:
        for key in [key for key, entry in shard.items() if now - entry.stored_at > CACHE_TTL_SECONDS]:
            del shard[key]


def build_scorer(settings: Settings) -> Scorer:
    return MatchCache(KeywordScorer(), settings.match_cache_size)


def check_canary(scorer: Scorer) -> str:
    result = scorer.score(CANARY_TEXT, CANARY_PROFILE)
    if result.score != CANARY_SCORE:
        raise AnalysisError(f"canary scored {result.score}, expected {CANARY_SCORE}")
    return f"{result.model} scored the canary {result.score}"
