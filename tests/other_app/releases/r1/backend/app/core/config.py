"""Settings from the environment: the database comes in five parts, as the hosts provide them."""

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    API_V1_STR: str = "/api/v1"
    PROJECT_NAME: str = "Inventory"
    SECRET_KEY: str = "changethis"
    FIRST_SUPERUSER: str = "admin@example.com"
    FIRST_SUPERUSER_PASSWORD: str = "changethis"
    POSTGRES_SERVER: str
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str
    POSTGRES_PASSWORD: str = ""
    POSTGRES_DB: str

    @property
    def SQLALCHEMY_DATABASE_URI(self) -> URL:
        return URL.create("postgresql+psycopg", username=self.POSTGRES_USER,
                          password=self.POSTGRES_PASSWORD or None, host=self.POSTGRES_SERVER,
                          port=self.POSTGRES_PORT, database=self.POSTGRES_DB)


settings = Settings()
