"""The OAuth2 password login: a form post of username and password, answered with a bearer token."""

import hmac
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request

from app.api.deps import token_for
from app.core.config import settings

router = APIRouter(tags=["login"])


@router.post("/login/access-token")
async def login_access_token(request: Request) -> dict[str, str]:
    form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
    username, password = form.get("username", ""), form.get("password", "")
    if username != settings.FIRST_SUPERUSER or not hmac.compare_digest(password, settings.FIRST_SUPERUSER_PASSWORD):
        raise HTTPException(status_code=400, detail="Incorrect email or password")
    return {"access_token": token_for(username), "token_type": "bearer"}
