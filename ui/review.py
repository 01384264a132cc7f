"""Whether a person reviewing candidates sees the dataset's ground truth.

The bias column answers what the review is for (is this tile really bias-conflicting?), so by
default the Bias tab hides it: no ⚑ on tiles, no aligned/conflicting in a tile's detail, one
histogram instead of one per group. An audit of labelled data may show it; every exclusion made
while it was shown is counted, and the report says whether the review saw the ground truth.
Stored in the project's settings under "review".
"""

from __future__ import annotations

from storage import repository as repo
from ui.studio import Studio

KEY = "review"


def truth_shown(settings: dict) -> bool:
    """Whether the Bias tab shows the bias column now (False by default)."""
    return bool(settings.get(KEY, {}).get("show_truth", False))


def review_record(settings: dict) -> dict:
    """{"show_truth", "ever_shown", "excluded_while_shown"} for the report."""
    review = settings.get(KEY, {})
    return {"show_truth": bool(review.get("show_truth", False)),
            "ever_shown": bool(review.get("ever_shown", False)),
            "excluded_while_shown": int(review.get("excluded_while_shown", 0))}


def project_truth_shown(studio: Studio, project_id: int | None) -> bool:
    """`truth_shown` of a project; False when none is open."""
    if project_id is None:
        return False
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        return project is not None and truth_shown(project.settings)


def set_truth_shown(studio: Studio, project_id: int, shown: bool) -> bool:
    with studio.store.sessions.begin() as session:
        _update(session, project_id, show_truth=bool(shown),
                ever_shown=bool(shown) or None)
    return bool(shown)


def count_exclusion(session, project_id: int) -> None:
    """Within the caller's transaction: one more exclusion decided; counted if the ground
    truth was on screen."""
    project = repo.get_project(session, project_id)
    if truth_shown(project.settings):
        review = project.settings.get(KEY, {})
        _update(session, project_id,
                excluded_while_shown=int(review.get("excluded_while_shown", 0)) + 1)


def _update(session, project_id: int, **changes) -> None:
    project = repo.get_project(session, project_id)
    if project is None:
        raise ValueError(f"project {project_id} does not exist")
    settings = dict(project.settings)
    review = dict(settings.get(KEY, {}))
    review.update({k: v for k, v in changes.items() if v is not None})
    settings[KEY] = review
    repo.update_project_settings(session, project_id, settings)
