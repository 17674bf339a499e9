"""Who is calling: the bearer token the login gave, in the Authorization header."""

import hashlib
import hmac

from fastapi import Header, HTTPException

from app.core.config import settings


def token_for(username: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), username.encode(), hashlib.sha256).hexdigest()


def current_user(authorization: str | None = Header(None)) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token, token_for(settings.FIRST_SUPERUSER)):
        raise HTTPException(status_code=401, detail="Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return settings.FIRST_SUPERUSER
