"""The items API as its users call it: log in, then create, list and delete, on the database the
POSTGRES_* variables name (migrated to head before the tests run)."""

import os

from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)
API = "/api/v1"


def login() -> dict[str, str]:
    answer = client.post(f"{API}/login/access-token", data={
        "username": os.environ.get("FIRST_SUPERUSER", "admin@example.com"),
        "password": os.environ["FIRST_SUPERUSER_PASSWORD"]})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_items_need_a_login() -> None:
    assert client.get(f"{API}/items/").status_code == 401


def test_a_wrong_password_is_refused() -> None:
    answer = client.post(f"{API}/login/access-token", data={"username": "admin@example.com", "password": "wrong"})
    assert answer.status_code == 400


def test_create_list_and_delete_an_item() -> None:
    headers = login()
    created = client.post(f"{API}/items/", json={"title": "from the tests"}, headers=headers)
    assert created.status_code == 201, created.text
    item_id = created.json()["id"]
    assert item_id in [item["id"] for item in client.get(f"{API}/items/", headers=headers).json()]
    assert client.delete(f"{API}/items/{item_id}", headers=headers).status_code == 200
    assert client.delete(f"{API}/items/{item_id}", headers=headers).status_code == 404
