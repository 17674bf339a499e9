"""Everything one worker builds once at start and shares between requests."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobapp.activity import ActivityRecorder
from jobapp.analysis import Scorer, build_scorer
from jobapp.db import APP_DIR, expected_revision, make_engine, make_session_factory
from jobapp.documents import LetterWriter
from jobapp.metrics import AppStateCollector
from jobapp.settings import Settings
from jobapp.version import git_version


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    version: str
    expected_revision: str | None
    scorer: Scorer
    letters: LetterWriter
    activity: ActivityRecorder
    state_metrics: CollectorRegistry


def build_runtime(settings: Settings) -> Runtime:
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    version = git_version(APP_DIR)
    state_metrics = CollectorRegistry(auto_describe=True)
    state_metrics.register(AppStateCollector(version, settings.environment, sessions))
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        version=version,
        expected_revision=expected_revision(),
        scorer=build_scorer(settings),
        letters=LetterWriter(settings.data_dir),
        activity=ActivityRecorder(sessions),
        state_metrics=state_metrics,
    )
