from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select

from app.api.deps import current_user
from app.core.db import engine
from app.models import items

router = APIRouter(prefix="/items", tags=["items"], dependencies=[Depends(current_user)])


class ItemCreate(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=1000)
    priority: int = Field(0, ge=0, le=5, description="0 (none) to 5 (urgent); urgent items are listed first")


class ItemPublic(ItemCreate):
    id: int


@router.get("/")
def read_items(skip: int = 0, limit: int = 100) -> list[ItemPublic]:
    query = (select(items.c.id, items.c.title, items.c.description, items.c.priority)
             .order_by(items.c.priority.desc(), items.c.id).offset(skip).limit(limit))
    with engine.connect() as conn:
        return [ItemPublic(**row) for row in conn.execute(query).mappings()]


@router.post("/", status_code=201)
def create_item(item: ItemCreate) -> ItemPublic:
    with engine.begin() as conn:
        new_id = conn.execute(insert(items).values(**item.model_dump()).returning(items.c.id)).scalar_one()
    return ItemPublic(id=new_id, **item.model_dump())


@router.delete("/{item_id}")
def delete_item(item_id: int) -> dict[str, str]:
    with engine.begin() as conn:
        if conn.execute(delete(items).where(items.c.id == item_id)).rowcount == 0:
            raise HTTPException(status_code=404, detail="Item not found")
    return {"message": "Item deleted successfully"}
