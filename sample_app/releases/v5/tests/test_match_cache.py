from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from jobapp.analysis import CACHE_SHARDS, CACHE_TTL_SECONDS, KeywordScorer, Match, MatchCache, MatchCacheFull
from jobapp.settings import DEFAULT_MATCH_CACHE_SIZE, Settings, SettingsError


class CountingScorer:
    def __init__(self) -> None:
        self.calls = 0

    def score(self, text: str, profile: str) -> Match:
        self.calls += 1
        return KeywordScorer().score(text, profile)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_analysis_is_answered_from_the_cache() -> None:
    inner = CountingScorer()
    cache = MatchCache(inner, capacity=64, clock=Clock())
    first = cache.score("Python and SQL", "python sql go")
    again = cache.score("Python and SQL", "python sql go")
    assert first == again and first.score == 67
    assert inner.calls == 1
    assert len(cache) == 1


def test_the_cache_never_grows_beyond_its_capacity() -> None:
    cache = MatchCache(KeywordScorer(), capacity=CACHE_SHARDS * 2, clock=Clock())
    refused = 0
    for number in range(200):
        try:
            cache.score(f"posting {number}", "python")
        except MatchCacheFull:
            refused += 1
    assert len(cache) == CACHE_SHARDS * 2
    assert refused == 200 - CACHE_SHARDS * 2


def test_expired_entries_make_room() -> None:
    clock = Clock()
    cache = MatchCache(KeywordScorer(), capacity=CACHE_SHARDS, clock=clock)
    for number in range(100):
        try:
            cache.score(f"posting {number}", "python")
        except MatchCacheFull:
            continue
    assert len(cache) == CACHE_SHARDS
    clock.now += CACHE_TTL_SECONDS + 1
    for number in range(100, 200):
        try:
            cache.score(f"posting {number}", "python")
        except MatchCacheFull:
            continue
    assert len(cache) == CACHE_SHARDS


def test_cache_size_comes_from_the_environment(tmp_path: Path) -> None:
    assert Settings.from_env({}).match_cache_size == DEFAULT_MATCH_CACHE_SIZE
    assert Settings.from_env({"JOBAPP_MATCH_CACHE_SIZE": "32"}).match_cache_size == 32
    for bad in ("0", "-5", "lots"):
        with pytest.raises(SettingsError, match="JOBAPP_MATCH_CACHE_SIZE"):
            Settings.from_env({"JOBAPP_MATCH_CACHE_SIZE": bad})


def test_features_list_the_match_cache(client: TestClient) -> None:
    assert "match-cache" in client.get("/api/features").json()
