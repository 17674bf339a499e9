"""Fills an empty, migrated database with realistic data.

Usage: ``python -m jobapp.seed --profile staging|production``

Profiles are deterministic (a seeded random generator). ``production`` carries what years of
real use left behind: pairs of jobs sharing a source URL (an old importer did not dedupe) and
jobs without a company. ``staging`` has neither. Seeding does nothing when jobs already exist.
Only the user sessions' last_seen is relative to the current time, since active users are
counted against the clock.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobapp.db import database_revision, make_engine, make_session_factory
from jobapp.models import Application, Document, Job, OutboxMessage, UserSession, utcnow
from jobapp.settings import Settings

EPOCH = datetime(2024, 1, 1, 8, 0, 0)
TITLES = (
    "Python Developer",
    "Backend Engineer",
    "Data Engineer",
    "Data Analyst",
    "DevOps Engineer",
    "Site Reliability Engineer",
    "Machine Learning Engineer",
    "Frontend Developer",
    "QA Engineer",
    "Product Manager",
    "Database Administrator",
    "Security Engineer",
    "Technical Writer",
)
COMPANIES = (
    "Northwind Analytics",
    "Contoso Logistics",
    "Fabrikam Health",
    "Tailspin Toys",
    "Adventure Works",
    "Wide World Importers",
    "Litware Cloud",
    "Proseware",
    "Blue Yonder Airlines",
    "Lucerne Publishing",
    "Woodgrove Bank",
    "Alpine Ski House",
    "Coho Winery",
    "Graphic Design Institute",
    "Margie's Travel",
)
LOCATIONS = (
    "Berlin, Germany",
    "Remote",
    "Amsterdam, Netherlands",
    "London, United Kingdom",
    "Munich, Germany",
    "Dublin, Ireland",
    "Warsaw, Poland",
    "Zurich, Switzerland",
    "Vienna, Austria",
    "Lisbon, Portugal",
)
SKILLS = (
    "python",
    "postgresql",
    "fastapi",
    "django",
    "docker",
    "kubernetes",
    "terraform",
    "aws",
    "react",
    "typescript",
    "sql",
    "airflow",
    "spark",
    "pytorch",
    "linux",
    "prometheus",
    "grafana",
    "go",
)
OUTBOX_STATUSES = ("sent", "sent", "sent", "queued", "failed")


class SeedError(RuntimeError):
    """The database cannot be seeded as asked."""


@dataclass(frozen=True)
class Profile:
    name: str
    url_base: str
    jobs: int
    duplicate_pairs: int
    companyless: int
    applications: int
    documents: int
    outbox: int
    users: int
    active_users: int


PROFILES = {
    "staging": Profile(
        name="staging",
        url_base="https://jobs.example.com/postings/5",
        jobs=20,
        duplicate_pairs=0,
        companyless=0,
        applications=30,
        documents=0,
        outbox=12,
        users=8,
        active_users=3,
    ),
    "production": Profile(
        name="production",
        url_base="https://jobs.example.com/postings/2",
        jobs=200,
        duplicate_pairs=5,
        companyless=10,
        applications=400,
        documents=40,
        outbox=120,
        users=60,
        active_users=12,
    ),
}


@dataclass(frozen=True)
class SeedReport:
    jobs: int
    applications: int
    documents: int
    outbox: int
    user_sessions: int


def seed(
    session: Session, profile: Profile, data_dir: Path, now: datetime | None = None
) -> SeedReport | None:
    """Seed ``profile`` into ``session``; None when jobs already exist."""
    if session.scalar(select(func.count()).select_from(Job)):
        return None
    rng = random.Random(f"jobapp-seed-{profile.name}")
    jobs = _jobs(rng, profile)
    session.add_all(jobs)
    session.flush()
    job_ids = [job.id for job in jobs]
    applications = [
        Application(job_id=rng.choice(job_ids), score=rng.randint(0, 100), created_at=_moment(rng, 400))
        for _ in range(profile.applications)
    ]
    documents = [
        _document(data_dir, jobs[rng.randrange(len(jobs))], number) for number in range(profile.documents)
    ]
    outbox = [
        OutboxMessage(
            recipient=f"recruiter{number}@{rng.choice(COMPANIES).split()[0].lower()}.example",
            subject=f"Application: {rng.choice(TITLES)}",
            body="Please find my application attached.",
            status=rng.choice(OUTBOX_STATUSES),
            created_at=_moment(rng, 400),
        )
        for number in range(profile.outbox)
    ]
    moment = now or utcnow()
    users = [
        UserSession(
            user_id=f"user-{number:04d}",
            last_seen=moment
            - timedelta(
                seconds=rng.randint(0, 240) if number < profile.active_users else rng.randint(600, 86_400)
            ),
        )
        for number in range(profile.users)
    ]
    session.add_all([*applications, *documents, *outbox, *users])
    session.flush()
    return SeedReport(len(jobs), len(applications), len(documents), len(outbox), len(users))


def _jobs(rng: random.Random, profile: Profile) -> list[Job]:
    unique = profile.jobs - profile.duplicate_pairs
    jobs: list[Job] = []
    for number in range(unique):
        title = rng.choice(TITLES)
        slug = title.lower().replace(" ", "-")
        skills = rng.sample(SKILLS, 4)
        jobs.append(
            Job(
                source_url=f"{profile.url_base}{number:03d}-{slug}",
                title=title,
                company=rng.choice(COMPANIES),
                location=rng.choice(LOCATIONS),
                description=f"We are hiring a {title.lower()}. You know {', '.join(skills)}.",
                created_at=EPOCH + timedelta(hours=7 * number),
            )
        )
    # The oldest rows are the legacy ones: no company, and re-imported twins.
    for job in jobs[: profile.companyless]:
        job.company = None
    for number, original in enumerate(
        jobs[profile.companyless : profile.companyless + profile.duplicate_pairs]
    ):
        jobs.append(
            Job(
                source_url=original.source_url,
                title=original.title,
                company=original.company,
                location=original.location,
                description=original.description,
                created_at=EPOCH + timedelta(hours=7 * unique + number),
            )
        )
    return jobs


def _document(data_dir: Path, job: Job, number: int) -> Document:
    relative = Path("documents") / f"seed-cover-letter-{number:03d}.txt"
    payload = f"Cover letter for {job.title} (job {job.id}).\n".encode()
    (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / relative).write_bytes(payload)
    return Document(
        job_id=job.id,
        path=str(relative),
        sha256=hashlib.sha256(payload).hexdigest(),
        created_at=EPOCH + timedelta(days=number),
    )


def _moment(rng: random.Random, days: int) -> datetime:
    return EPOCH + timedelta(minutes=rng.randint(0, days * 24 * 60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobapp.seed", description="Seed an empty jobapp database."
    )
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES))
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        if database_revision(engine) is None:
            raise SeedError(f"{settings.database_url} has no schema; run `alembic upgrade head` first")
        with make_session_factory(engine).begin() as session:
            report = seed(session, PROFILES[args.profile], settings.data_dir)
    finally:
        engine.dispose()
    if report is None:
        print("jobs already present; nothing seeded")
    else:
        print(
            f"seeded {args.profile}: {report.jobs} jobs, {report.applications} applications, "
            f"{report.documents} documents, {report.outbox} outbox messages, "
            f"{report.user_sessions} user sessions"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
