from __future__ import annotations

import pytest
from jobapp.scraper import SAMPLE_PAGE, ScrapeError, load_source, parse_job_board


def test_sample_page_parses_to_ten_complete_jobs() -> None:
    jobs = load_source("sample")
    assert len(jobs) == 10
    assert len({job.link for job in jobs}) == 10
    for job in jobs:
        assert job.title and job.company and job.location and job.description and job.salary_text
        assert job.link.startswith("https://jobs.example.com/postings/")
    first = jobs[0]
    assert first.title == "Senior Python Developer"
    assert first.company == "Northwind Analytics"
    assert first.salary_text == "€70,000 - €85,000 per year"


def test_nested_markup_and_entities_become_plain_text() -> None:
    page = """
    <article class="job"><h2 class="title">Data <em>Engineer</em></h2>
      <span class="company">Fish &amp; Chips Ltd</span><span class="location">Leeds</span>
      <p class="description">Line one.
         <b>Line two.</b></p><a class="link" href="https://example.com/1">x</a></article>
    """
    [job] = parse_job_board(page)
    assert job.title == "Data Engineer"
    assert job.company == "Fish & Chips Ltd"
    assert job.description == "Line one. Line two."
    assert job.salary_text == ""


def test_page_without_postings_is_an_error() -> None:
    with pytest.raises(ScrapeError):
        parse_job_board("<html><body><p>No jobs today.</p></body></html>")


def test_posting_without_link_is_an_error() -> None:
    with pytest.raises(ScrapeError):
        parse_job_board('<article class="job"><h2 class="title">Orphan</h2></article>')


def test_sample_page_ships_with_the_package() -> None:
    assert SAMPLE_PAGE.is_file()
