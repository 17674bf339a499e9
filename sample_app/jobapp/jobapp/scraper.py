"""Reads job postings from a job board page and stores them.

The only source is the sample board shipped in ``jobapp/data/jobs.html``; reading a local file
keeps scraping deterministic and free of network access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobapp.models import Job

SAMPLE_PAGE = Path(__file__).resolve().parent / "data" / "jobs.html"
SOURCES = {"sample": SAMPLE_PAGE}
TEXT_FIELDS = ("title", "company", "location", "salary", "description")


class ScrapeError(ValueError):
    """The page holds no job postings, or a posting lacks a required field."""


@dataclass(frozen=True)
class ScrapedJob:
    title: str
    company: str
    location: str
    description: str
    link: str
    salary_text: str


@dataclass(frozen=True)
class ScrapeResult:
    scraped: int
    new: int
    job_ids: list[int]


@dataclass
class _Posting:
    fields: dict[str, list[str]] = field(default_factory=dict)
    link: str = ""


class _JobBoardParser(HTMLParser):
    """Collects ``<article class="job">`` elements; children are found by their class."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.postings: list[_Posting] = []
        self._current: _Posting | None = None
        self._article_depth = 0
        self._field: str | None = None
        self._field_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if self._current is None:
            if tag == "article" and "job" in classes:
                self._current = _Posting()
                self._article_depth = 1
            return
        self._article_depth += 1
        if self._field is not None:
            self._field_depth += 1
            return
        if tag == "a" and "link" in classes:
            self._current.link = attributes.get("href") or ""
        for name in TEXT_FIELDS:
            if name in classes:
                self._field, self._field_depth = name, 1
                self._current.fields.setdefault(name, [])

    def handle_endtag(self, tag: str) -> None:
        if self._current is None:
            return
        if self._field is not None:
            self._field_depth -= 1
            if self._field_depth == 0:
                self._field = None
        self._article_depth -= 1
        if self._article_depth == 0:
            self.postings.append(self._current)
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and self._field is not None:
            self._current.fields[self._field].append(data)


def parse_job_board(html: str) -> list[ScrapedJob]:
    parser = _JobBoardParser()
    parser.feed(html)
    parser.close()
    jobs = [_to_job(posting) for posting in parser.postings]
    if not jobs:
        raise ScrapeError('the page holds no <article class="job"> postings')
    return jobs


def _to_job(posting: _Posting) -> ScrapedJob:
    def text(name: str) -> str:
        return " ".join("".join(posting.fields.get(name, [])).split())

    job = ScrapedJob(
        title=text("title"),
        company=text("company"),
        location=text("location"),
        description=text("description"),
        link=posting.link,
        salary_text=text("salary"),
    )
    if not job.title or not job.link:
        raise ScrapeError(f"a posting has no title or link: {job!r}")
    return job


def load_source(source: str) -> list[ScrapedJob]:
    return parse_job_board(SOURCES[source].read_text(encoding="utf-8"))


def store_jobs(session: Session, scraped: list[ScrapedJob]) -> ScrapeResult:
    """Insert new postings and refresh known ones, matching on the posting URL."""
    job_ids: list[int] = []
    new = 0
    for item in scraped:
        # first(), not one(): legacy rows may share a source URL.
        job = session.scalars(select(Job).where(Job.source_url == item.link).order_by(Job.id)).first()
        if job is None:
            job = Job(source_url=item.link)
            session.add(job)
            new += 1
        job.title = item.title
        job.company = item.company or None
        job.location = item.location
        job.description = item.description
        session.flush()
        job_ids.append(job.id)
    return ScrapeResult(scraped=len(scraped), new=new, job_ids=job_ids)
