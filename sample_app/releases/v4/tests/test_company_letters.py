from __future__ import annotations

from fastapi.testclient import TestClient
from jobapp.documents import LETTERS_DIR, company_key


def letter_for(client: TestClient, title: str) -> str:
    client.post("/api/scrape", json={"source": "sample"})
    job = next(job for job in client.get("/api/jobs").json()["jobs"] if job["title"] == title)
    created = client.post(
        "/api/documents/cover-letter", json={"job_id": job["id"], "applicant": "Grace Hopper"}
    )
    assert created.status_code == 200, created.text
    letter: str = client.get(f"/api/documents/{created.json()['document_id']}").text
    return letter


def test_a_company_with_a_template_gets_its_own_letter(client: TestClient) -> None:
    letter = letter_for(client, "Backend Engineer")
    assert letter.startswith("Dear Contoso Logistics hiring team,")
    assert "Shipment tracking at your scale" in letter
    assert letter.rstrip().endswith("Grace Hopper")


def test_other_companies_get_the_default_letter(client: TestClient) -> None:
    letter = letter_for(client, "DevOps Engineer")
    assert letter.startswith("Dear hiring team at Tailspin Toys,")


def test_template_files_are_named_by_company_key() -> None:
    assert company_key("Contoso Logistics") == "contoso-logistics"
    assert company_key("  Margie's Travel ") == "margie-s-travel"
    assert (LETTERS_DIR / "contoso-logistics.txt").is_file()


def test_health_counts_the_loaded_templates(client: TestClient) -> None:
    client.post("/api/scrape", json={"source": "sample"})
    documents = client.get("/api/health").json()["services"]["documents"]
    assert documents["status"] == "ok"
    # The default, and one for each of the three sample-board companies that have a file.
    assert "4 letter template(s)" in documents["detail"]


def test_features_list_company_letters(client: TestClient) -> None:
    assert "company-letters" in client.get("/api/features").json()
