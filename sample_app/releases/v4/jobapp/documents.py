"""Cover letters: rendered from a template, written under the data dir, recorded in ``documents``."""

from __future__ import annotations

import hashlib
import os
import re
import string
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from jobapp.models import Document, Job
from sqlalchemy import text
from sqlalchemy.orm import Session

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
# One file per company, named by company_key(); companies without a file get the default.
LETTERS_DIR = Path(__file__).resolve().parent / "data" / "letters"


class TemplateError(ValueError):
    """A letter template uses a placeholder the renderer does not provide."""


@dataclass(frozen=True)
class LetterTemplates:
    default: str
    by_company: dict[str, str] = field(default_factory=dict)

    def for_company(self, company: str | None) -> str:
        if company is None:
            return self.default
        return self.by_company.get(company_key(company), self.default)

    def __len__(self) -> int:
        return 1 + len(self.by_company)


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


def company_key(company: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", company.lower()).strip("-")


def load_templates(session: Session) -> LetterTemplates:
    """The default template, plus the template of every company we hold jobs for that has one."""
    by_company: dict[str, str] = {}
    for company in session.execute(text("SELECT DISTINCT company FROM jobs")).scalars():
        key = company_key(company)
        path = LETTERS_DIR / f"{key}.txt"
        if path.is_file():
            by_company[key] = validate_template(path.read_text(encoding="utf-8"))
    return LetterTemplates(default=validate_template(DEFAULT_TEMPLATE), by_company=by_company)


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
        self._templates: LetterTemplates | None = None

    def templates(self, session: Session) -> LetterTemplates:
        # Loaded on first use and kept: template files only change with a release.
        if self._templates is None:
            self._templates = load_templates(session)
        return self._templates

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
