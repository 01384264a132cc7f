"""What several repository modules share: the shape of a bulk-insert row and the lookup that
turns a missing id into a `ValueError`.

Private to `storage.repository`; it knows no table in particular.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy.orm import Session

RowValues = Mapping[str, Any]  # one row of a bulk insert: column name -> value
_Table = TypeVar("_Table")


def require_row(session: Session, model: type[_Table], row_id: int) -> _Table:
    row = session.get(model, row_id)
    if row is None:
        table = getattr(model, "__tablename__", model.__name__)
        raise ValueError(f"no {table} row with id {row_id}")
    return row
