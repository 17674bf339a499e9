"""The HTTP surface of jobapp."""

from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from jobapp import mailer, metrics
from jobapp.health import health_report
from jobapp.models import Application, Document, Job, OutboxMessage
from jobapp.runtime import Runtime
from jobapp.scraper import load_source, store_jobs
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

router = APIRouter()
FEATURES = ("salary-insights", "canonical-dedupe", "company-letters")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_session(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[Session, Depends(get_session)]


class ScrapeRequest(BaseModel):
    source: Literal["sample"] = "sample"


class AnalyzeRequest(BaseModel):
    job_id: int | None = None
    text: str | None = Field(default=None, max_length=50_000)
    profile: str = Field(min_length=1, max_length=2_000)

    @model_validator(mode="after")
    def one_subject(self) -> AnalyzeRequest:
        if (self.job_id is None) == (self.text is None):
            raise ValueError("give exactly one of job_id or text")
        return self


class CoverLetterRequest(BaseModel):
    job_id: int
    applicant: str = Field(min_length=1, max_length=200)


class EmailRequest(BaseModel):
    to: str = Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    subject: str = Field(min_length=1, max_length=300)
    body: str = Field(max_length=100_000)


def job_or_404(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    return job


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "source_url": job.source_url,
        "canonical_url": job.canonical_url,
        "title": job.title,
        "company": job.company,
        "location": job.location,
        "description": job.description,
        "salary_min": job.salary_min,
        "salary_max": job.salary_max,
        "created_at": _iso(job.created_at),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat() + "Z"


@router.get("/health")
def liveness() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/health")
def readiness(runtime: RuntimeDep) -> JSONResponse:
    status_code, body = health_report(runtime)
    return JSONResponse(body, status_code=status_code)


@router.get("/metrics")
def prometheus_metrics(runtime: RuntimeDep) -> Response:
    payload = metrics.exposition(runtime.settings.metrics_dir, runtime.state_metrics)
    return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", response_class=HTMLResponse)
def index(runtime: RuntimeDep) -> HTMLResponse:
    version = html.escape(runtime.version)
    return HTMLResponse(
        "<!DOCTYPE html>\n<html><head><title>jobapp</title></head><body>"
        f"<h1>jobapp</h1><p>Automated job applications. Version <code>{version}</code>.</p>"
        "<p>New: salary insights. Every job shows the salary range its posting names.</p>"
        "</body></html>\n"
    )


@router.get("/api/features")
def features() -> list[str]:
    return list(FEATURES)


@router.get("/api/jobs")
def list_jobs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    total = session.scalar(select(func.count()).select_from(Job)) or 0
    jobs = session.scalars(select(Job).order_by(Job.id).limit(limit).offset(offset))
    return {"total": total, "jobs": [job_view(job) for job in jobs]}


@router.post("/api/scrape")
def scrape(request: ScrapeRequest, session: SessionDep) -> dict[str, Any]:
    result = store_jobs(session, load_source(request.source))
    session.commit()
    return {"scraped": result.scraped, "new": result.new, "job_ids": result.job_ids}


@router.post("/api/analyze")
def analyze(request: AnalyzeRequest, runtime: RuntimeDep, session: SessionDep) -> dict[str, Any]:
    if request.job_id is not None:
        job = job_or_404(session, request.job_id)
        text = f"{job.title}\n{job.company or ''}\n{job.location}\n{job.description}"
    else:
        text = request.text or ""
    match = runtime.scorer.score(text, request.profile)
    application_id = None
    if request.job_id is not None:
        application = Application(job_id=request.job_id, score=match.score)
        session.add(application)
        session.commit()
        application_id = application.id
    return {
        "score": match.score,
        "matched": list(match.matched),
        "model": match.model,
        "application_id": application_id,
    }


@router.post("/api/documents/cover-letter")
def write_cover_letter(
    request: CoverLetterRequest, runtime: RuntimeDep, session: SessionDep
) -> dict[str, Any]:
    job = job_or_404(session, request.job_id)
    stored = runtime.letters.write(session, job, request.applicant)
    session.commit()
    return {"document_id": stored.id, "bytes": stored.bytes, "sha256": stored.sha256}


@router.get("/api/documents/{document_id}", response_class=PlainTextResponse)
def read_document(document_id: int, runtime: RuntimeDep, session: SessionDep) -> PlainTextResponse:
    document = session.get(Document, document_id)
    if document is None:
        raise HTTPException(status_code=404, detail=f"document {document_id} not found")
    return PlainTextResponse(runtime.letters.read(document))


@router.post("/api/email")
def queue_email(request: EmailRequest, session: SessionDep) -> dict[str, Any]:
    message = mailer.queue_email(session, request.to, request.subject, request.body)
    session.commit()
    return {"id": message.id, "status": message.status}


@router.get("/api/outbox/{message_id}")
def read_outbox(message_id: int, session: SessionDep) -> dict[str, Any]:
    message = session.get(OutboxMessage, message_id)
    if message is None:
        raise HTTPException(status_code=404, detail=f"outbox message {message_id} not found")
    return {
        "id": message.id,
        "to": message.recipient,
        "subject": message.subject,
        "body": message.body,
        "status": message.status,
        "created_at": _iso(message.created_at),
    }
