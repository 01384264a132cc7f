"""Typed reads and writes of the store, one short function per question the app asks.

Every function takes a `Session` first and never commits: the caller owns the transaction,
usually `with store.sessions.begin() as session:` around one UI event or one job step. Bulk
writes (`add_samples`, `add_scores`, `add_captions`) take rows as mappings and insert them in one
executemany, which stays fast at 100k+ rows. Paths in rows are relative to the workspace root.

One module per aggregate: `projects`, `samples`, `jobs`, `scores` (and candidates), `captions`
(and prompts), `images` (generated), `trained_models`. This package re-exports all of them, so
callers write `from storage import repository as repo; repo.get_project(session, 1)`.

This package knows nothing of torch, Gradio, or where files live on disk.
"""

from storage.repository._rows import RowValues
from storage.repository.captions import (
    add_captions,
    get_prompt,
    list_captions,
    list_prompts,
    save_prompts,
    update_prompt,
)
from storage.repository.images import (
    add_generated_image,
    delete_generated_images,
    get_generated_image,
    list_generated_images,
    set_image_accepted,
    set_image_checks,
    set_images_accepted,
)
from storage.repository.jobs import (
    INTERRUPTED_MESSAGE,
    active_job,
    cancel_job,
    create_job,
    finish_job,
    get_job,
    interrupt_active_jobs,
    kinds_done_since,
    latest_finished_job,
    latest_job,
    list_jobs,
    mark_interrupted_jobs,
    referenced_paths,
    start_job,
    unfinished_job_ids,
    update_job_progress,
)
from storage.repository.projects import (
    create_project,
    delete_project,
    get_project,
    get_project_by_name,
    list_projects,
    most_recent_project_id,
    update_project_settings,
)
from storage.repository.samples import (
    SampleColumns,
    add_samples,
    class_split_counts,
    count_samples,
    get_sample,
    label_bias_counts,
    list_samples,
    sample_columns,
    sample_ids_by_position,
    samples_by_ids,
    samples_per_class,
)
from storage.repository.scores import (
    LossHistogram,
    RankedSample,
    ScoreColumns,
    add_scores,
    count_candidates,
    get_score,
    list_scores,
    loss_histogram,
    score_columns,
    set_candidate_excluded,
    set_candidates,
    top_candidates,
)
from storage.repository.trained_models import add_model, latest_model, list_models

__all__ = [
    # rows and results
    "INTERRUPTED_MESSAGE", "LossHistogram", "RankedSample", "RowValues", "SampleColumns",
    "ScoreColumns",
    # projects
    "create_project", "delete_project", "get_project", "get_project_by_name", "list_projects",
    "most_recent_project_id", "update_project_settings",
    # samples
    "add_samples", "class_split_counts", "count_samples", "get_sample", "label_bias_counts",
    "list_samples", "sample_columns", "sample_ids_by_position", "samples_by_ids",
    "samples_per_class",
    # jobs
    "active_job", "cancel_job", "create_job", "finish_job", "get_job", "interrupt_active_jobs",
    "kinds_done_since", "latest_finished_job", "latest_job", "list_jobs", "mark_interrupted_jobs",
    "referenced_paths", "start_job", "unfinished_job_ids", "update_job_progress",
    # scores and candidates
    "add_scores", "count_candidates", "get_score", "list_scores", "loss_histogram",
    "score_columns", "set_candidate_excluded", "set_candidates", "top_candidates",
    # captions and prompts
    "add_captions", "get_prompt", "list_captions", "list_prompts", "save_prompts",
    "update_prompt",
    # generated images
    "add_generated_image", "delete_generated_images", "get_generated_image",
    "list_generated_images", "set_image_accepted", "set_image_checks", "set_images_accepted",
    # trained models
    "add_model", "latest_model", "list_models",
]
