from __future__ import annotations

from jobapp.analysis import CANARY_PROFILE, CANARY_SCORE, CANARY_TEXT, MODEL, keywords, score_text


def test_keywords_drop_stopwords_and_repeats() -> None:
    assert keywords("Python and the PostgreSQL, python; C++ node.js") == [
        "python",
        "postgresql",
        "c++",
        "node.js",
    ]


def test_score_is_the_share_of_profile_keywords_found() -> None:
    match = score_text("Backend role: Python, Django and AWS.", "python django kubernetes aws")
    assert match.score == 75
    assert match.matched == ("python", "django", "aws")
    assert match.model == MODEL


def test_empty_profile_scores_zero() -> None:
    assert score_text("anything", "the and of").score == 0


def test_canary_scores_as_expected() -> None:
    assert score_text(CANARY_TEXT, CANARY_PROFILE).score == CANARY_SCORE


def test_model_is_the_keyword_matcher() -> None:
    assert MODEL == "keyword-v1"
