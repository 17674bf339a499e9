"""Cover letters: rendered from a template, written under the data dir, recorded in ``documents``."""

from __future__ import annotations

import hashlib
import os
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from jobapp.models import Document, Job

DEFAULT_TEMPLATE = (
    "Dear hiring team at {company},\n"
    "\n"
    "I am writing to apply for the {title} position in {location}. The role matches my experience,\n"
    "and I would welcome the chance to discuss how I can contribute to your team.\n"
    "\n"
    "Kind regards,\n"
    "{applicant}\n"
)
TEMPLATE_FIELDS = frozenset({"company", "title", "location", "applicant"})


class TemplateError(ValueError):
    """A letter template uses a placeholder the renderer does not provide."""


@dataclass(frozen=True)
class LetterTemplates:
    default: str

    def for_company(self, company: str | None) -> str:
        return self.default

    def __len__(self) -> int:
        return 1


@dataclass(frozen=True)
class StoredDocument:
    id: int
    bytes: int
    sha256: str


def validate_template(template: str) -> str:
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = used - TEMPLATE_FIELDS
    if unknown:
        raise TemplateError(f"unknown placeholders {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}")
    return template


def load_templates(session: Session) -> LetterTemplates:
    return LetterTemplates(default=validate_template(DEFAULT_TEMPLATE))


def render_letter(templates: LetterTemplates, job: Job, applicant: str) -> str:
    return templates.for_company(job.company).format(
        company=job.company or "your company",
        title=job.title,
        location=job.location,
        applicant=applicant,
    )


class LetterWriter:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.directory = data_dir / "documents"

    def templates(self, session: Session) -> LetterTemplates:
        return load_templates(session)

    def write(self, session: Session, job: Job, applicant: str) -> StoredDocument:
        text = render_letter(self.templates(session), job, applicant)
        payload = text.encode("utf-8")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"cover-letter-{job.id}-{uuid.uuid4().hex}.txt"
        path.write_bytes(payload)
        digest = hashlib.sha256(payload).hexdigest()
        document = Document(job_id=job.id, path=str(path.relative_to(self.data_dir)), sha256=digest)
        session.add(document)
        session.flush()
        return StoredDocument(id=document.id, bytes=len(payload), sha256=digest)

    def read(self, document: Document) -> str:
        return (self.data_dir / document.path).read_text(encoding="utf-8")

    def check(self, session: Session) -> str:
        """Raise unless a letter can be written: the directory takes a file and the templates load."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}-{uuid.uuid4().hex}"  # checks may overlap
        probe.write_bytes(b"ok")
        probe.unlink()
        templates = self.templates(session)
        return f"{self.directory} writable; {len(templates)} letter template(s) loaded"
