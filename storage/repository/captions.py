"""Captions and prompts: what a captioning job said about each candidate, and the generation
prompts filtered from it, which a person may edit, re-class or drop.

A prompt keeps its original text next to the edit. This module knows nothing of how captions
were made or filtered, nor of the images generated from the prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from storage.models import Caption, Prompt
from storage.repository._rows import RowValues, require_row


def add_captions(session: Session, job_id: int, rows: Iterable[RowValues]) -> int:
    """Insert captions; each row has sample_id, text, source and optionally params."""
    values = [{"params": {}, **row, "job_id": job_id} for row in rows]
    if values:
        session.execute(insert(Caption), values)
    return len(values)


def list_captions(
    session: Session, job_id: int, *, sample_id: int | None = None
) -> Sequence[Caption]:
    """In insertion order; only one sample's when `sample_id` is given."""
    query = select(Caption).where(Caption.job_id == job_id)
    if sample_id is not None:
        query = query.where(Caption.sample_id == sample_id)
    return session.scalars(query.order_by(Caption.id)).all()


def save_prompts(
    session: Session, project_id: int, job_id: int | None, rows: Iterable[RowValues]
) -> list[Prompt]:
    """Insert prompts; each row has label, text_original and optionally sample_id, keep,
    matched_words, text_edited. Returns them with their ids, in the order given."""
    prompts = [Prompt(**{**row, "project_id": project_id, "job_id": job_id}) for row in rows]
    session.add_all(prompts)
    session.flush()
    return prompts


def update_prompt(
    session: Session,
    prompt_id: int,
    *,
    text: str | None = None,
    keep: bool | None = None,
    label: int | None = None,
    matched_words: list[str] | None = None,
) -> Prompt:
    """Edit a prompt's text, keep flag, class or the filter's words it contains. The original
    text is kept; editing back to it clears the edit."""
    prompt = require_row(session, Prompt, prompt_id)
    if text is not None:
        prompt.text_edited = None if text == prompt.text_original else text
    if keep is not None:
        prompt.keep = keep
    if label is not None:
        prompt.label = label
    if matched_words is not None:
        prompt.matched_words = list(matched_words)
    session.flush()
    return prompt


def get_prompt(session: Session, prompt_id: int) -> Prompt | None:
    return session.get(Prompt, prompt_id)


def list_prompts(
    session: Session,
    project_id: int,
    *,
    job_id: int | None = None,
    label: int | None = None,
    kept_only: bool = False,
) -> Sequence[Prompt]:
    query = select(Prompt).where(Prompt.project_id == project_id)
    if job_id is not None:
        query = query.where(Prompt.job_id == job_id)
    if label is not None:
        query = query.where(Prompt.label == label)
    if kept_only:
        query = query.where(Prompt.keep == True)
    return session.scalars(query.order_by(Prompt.id)).all()
