from sqlalchemy import Column, Integer, MetaData, String, Table

metadata = MetaData()

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(200), nullable=False),
    Column("description", String(1000)),
    Column("priority", Integer, nullable=False, server_default="0"),
)
