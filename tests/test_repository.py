"""Tests for `storage.repository`: round trips of every aggregate, the queries the app pages
through, and what the repository refuses.

Each test gets a fresh SQLite file under tmp_path and one transaction that is rolled back;
nothing here needs torch or a GPU.
"""

from __future__ import annotations

import bisect
import random
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import Store, open_store
from storage import repository as repo
from storage.models import Base, GeneratedImage, Job, ModelRole, Project, Sample, Score


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(tmp_path / "workspace")
    yield store
    store.close()


@pytest.fixture
def session(store: Store) -> Session:
    """One transaction per test, rolled back at the end (the repository never commits)."""
    with store.sessions() as session, session.begin():
        yield session
        session.rollback()


def make_project(session: Session, n_samples: int = 20, n_classes: int = 2) -> Project:
    project = repo.create_project(
        session,
        name="waterbirds",
        source="/data/waterbirds",
        class_names=[f"class{i}" for i in range(n_classes)],
        bias_names=["land", "water"],
        image_size=64,
    )
    rows = (
        {
            "position": i,
            "path": f"images/{i:06d}.png",
            "split": "train" if i % 5 else "valid",
            "label": i % n_classes,
            "bias": (i // n_classes) % 2,
        }
        for i in range(n_samples)
    )
    repo.add_samples(session, project.id, rows)
    return project


def add_planted_scores(
    session: Session, project: Project, seed: int = 0, candidates_per_class: int = 3
) -> tuple[Job, dict[int, float]]:
    """Random losses; the highest `candidates_per_class` per class are marked candidates."""
    rng = random.Random(seed)
    job = repo.create_job(session, project.id, "score", {"loss": "gce"})
    ids = repo.sample_ids_by_position(session, project.id)
    labels = dict(session.execute(select(Sample.id, Sample.label)).all())
    losses = {sample_id: rng.uniform(0.0, 4.0) for sample_id in ids.values()}
    ranks: dict[int, int] = {}
    for label in set(labels.values()):
        in_class = sorted((i for i in losses if labels[i] == label), key=lambda i: -losses[i])
        top = in_class[:candidates_per_class]
        ranks.update({sample_id: rank for rank, sample_id in enumerate(top)})
    rows = (
        {"sample_id": i, "loss": loss, "is_candidate": i in ranks, "rank_in_class": ranks.get(i)}
        for i, loss in losses.items()
    )
    repo.add_scores(session, job.id, rows)
    return job, losses


# --- the transaction -----------------------------------------------------------------------


def test_repository_functions_never_commit(store: Store):
    with store.sessions() as session:
        session.begin()
        project = make_project(session)
        job, _ = add_planted_scores(session, project)
        repo.add_captions(session, job.id, [{"sample_id": 1, "text": "a bird", "source": "blip"}])
        prompt_rows = [{"label": 0, "text_original": "a"}]
        [prompt] = repo.save_prompts(session, project.id, job.id, prompt_rows)
        repo.add_generated_image(
            session, job_id=job.id, prompt_id=prompt.id, path="generated/1.png", seed=1, model="sd"
        )
        repo.add_model(session, project.id, role="biased", weights_path="weights/b", arch="r18")
        repo.finish_job(session, job.id, "done")
        session.rollback()
    with store.engine.connect() as connection:
        for table in Base.metadata.tables:
            assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table


# --- projects ------------------------------------------------------------------------------


def test_project_round_trip(session: Session):
    project = make_project(session)
    repo.update_project_settings(session, project.id, {"k": 10})
    assert repo.get_project(session, project.id).settings == {"k": 10}
    assert repo.get_project_by_name(session, "waterbirds").id == project.id
    assert [p.name for p in repo.list_projects(session)] == ["waterbirds"]
    assert repo.get_project(session, 999) is None
    with pytest.raises(ValueError, match="empty"):
        repo.create_project(session, name=" ", source="x", class_names=["a"], image_size=8)
    with pytest.raises(IntegrityError):
        repo.create_project(session, name="waterbirds", source="x", class_names=["a"], image_size=8)


def test_deleting_a_project_deletes_what_it_owns(session: Session):
    project = make_project(session)
    add_planted_scores(session, project)
    repo.delete_project(session, project.id)
    session.flush()
    for table in (Project, Sample, Job, Score):
        assert session.scalar(select(func.count()).select_from(table)) == 0


def test_most_recent_project_is_the_one_with_the_newest_job(session: Session):
    assert repo.most_recent_project_id(session) is None
    first = make_project(session)
    second = repo.create_project(session, name="celeba", source="x", class_names=["a", "b"],
                                 image_size=8)
    assert repo.most_recent_project_id(session) == second.id  # no jobs: the newest project
    repo.create_job(session, first.id, "biased_train")
    assert repo.most_recent_project_id(session) == first.id


# --- samples -------------------------------------------------------------------------------


def test_samples_round_trip(session: Session):
    project = make_project(session, n_samples=10)
    samples = repo.list_samples(session, project.id)
    assert [s.position for s in samples] == list(range(10))
    assert samples[3].path == "images/000003.png" and samples[3].mask_path is None
    valid = repo.list_samples(session, project.id, split="valid")
    assert [s.position for s in valid] == [0, 5]
    assert repo.count_samples(session, project.id, split="train") == 8
    columns = repo.sample_columns(session, project.id)
    assert columns.positions == list(range(10)) and columns.labels == [i % 2 for i in range(10)]
    assert columns.ids == [s.id for s in samples]
    assert repo.sample_columns(session, 999).ids == []
    assert repo.sample_ids_by_position(session, project.id)[4] == samples[4].id
    with pytest.raises(IntegrityError):  # (project_id, position) is unique
        duplicate = {"position": 0, "path": "x", "split": "train", "label": 0}
        repo.add_samples(session, project.id, [duplicate])


def test_sample_counts_per_class_split_and_bias(session: Session):
    project = make_project(session, n_samples=20)
    assert repo.class_split_counts(session, project.id) == {
        ("train", 0): 8, ("train", 1): 8, ("valid", 0): 2, ("valid", 1): 2}
    assert repo.label_bias_counts(session, project.id) == {
        (0, 0): 4, (0, 1): 4, (1, 0): 4, (1, 1): 4}
    firsts = repo.samples_per_class(session, project.id, split="train", per_class=2)
    assert [(s.label, s.position) for s in firsts] == [(0, 2), (0, 4), (1, 1), (1, 3)]
    found = repo.samples_by_ids(session, [firsts[0].id, 999])
    assert list(found) == [firsts[0].id] and repo.get_sample(session, 999) is None


# --- jobs ----------------------------------------------------------------------------------


def test_job_lifecycle(session: Session):
    project = make_project(session)
    older = repo.create_job(session, project.id, "biased_train", {"epochs": 2})
    job = repo.create_job(session, project.id, "biased_train", {"epochs": 3})
    assert (job.status, job.progress, job.params) == ("queued", 0.0, {"epochs": 3})
    repo.start_job(session, job.id)
    assert repo.update_job_progress(session, job.id, 0.5, "epoch 2/3") == "running"
    assert (job.status, job.progress, job.message) == ("running", 0.5, "epoch 2/3")
    assert job.started_at.tzinfo == UTC
    repo.finish_job(session, job.id, "done", result={"acc": 0.9}, timings={"train": 1.5})
    session.refresh(job)
    assert (job.status, job.progress) == ("done", 1.0)
    assert (job.result, job.timings) == ({"acc": 0.9}, {"train": 1.5})
    repo.finish_job(session, older.id, "failed", error="CUDA out of memory")
    assert repo.latest_job(session, project.id, "biased_train").id == job.id
    assert repo.latest_job(session, project.id, "biased_train", status="failed").id == older.id
    assert repo.latest_job(session, project.id, "score") is None
    assert [j.id for j in repo.list_jobs(session, project.id)] == [job.id, older.id]

    with pytest.raises(ValueError, match="biased_train"):
        repo.create_job(session, project.id, "trian")
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        repo.update_job_progress(session, job.id, 1.5)
    with pytest.raises(ValueError, match="does not end a job"):
        repo.finish_job(session, job.id, "running")
    with pytest.raises(ValueError, match="no jobs row with id 999"):
        repo.update_job_progress(session, 999, 0.1)


def test_mark_interrupted_jobs_marks_only_unfinished_ones(session: Session):
    project = make_project(session)
    queued, running, done = (repo.create_job(session, project.id, "generate") for _ in range(3))
    repo.start_job(session, running.id)
    repo.finish_job(session, done.id, "done")
    assert repo.mark_interrupted_jobs(session) == 2
    assert [queued.status, running.status, done.status] == ["interrupted", "interrupted", "done"]
    assert running.finished_at is not None and "run it again" in running.error
    assert done.error is None
    assert repo.mark_interrupted_jobs(session) == 0


def test_active_and_finished_jobs_and_cancelling(session: Session):
    project = make_project(session)
    assert repo.active_job(session, project.id) is None
    done = repo.create_job(session, project.id, "import")
    repo.finish_job(session, done.id, "done")
    running = repo.create_job(session, project.id, "generate")
    repo.start_job(session, running.id)
    assert repo.active_job(session, project.id).id == running.id
    assert repo.active_job(session).id == running.id
    assert repo.latest_finished_job(session, project.id).id == done.id
    assert repo.cancel_job(session, running.id)
    assert running.status == "cancelled" and running.finished_at is not None
    assert not repo.cancel_job(session, running.id)  # already ended: unchanged
    assert repo.update_job_progress(session, running.id, 0.5) == "cancelled"  # the worker sees
    assert repo.latest_finished_job(session, project.id).id == running.id
    assert repo.create_job(session, project.id, "filter").kind == "filter"


# --- scores and candidates -----------------------------------------------------------------


def test_loss_histogram_matches_a_python_recount(session: Session):
    project = make_project(session, n_samples=3000, n_classes=3)
    job, losses = add_planted_scores(session, project)
    labels = dict(session.execute(select(Sample.id, Sample.label)).all())
    for label in (None, 0, 2):
        values = [loss for i, loss in losses.items() if label is None or labels[i] == label]
        histogram = repo.loss_histogram(session, job.id, bins=17, label=label)
        expected = [0] * 17
        for value in values:
            expected[min(bisect.bisect_right(histogram.edges, value) - 1, 16)] += 1
        assert histogram.counts == expected
        assert sum(histogram.counts) == len(values)
        assert histogram.edges[0] == min(values) and histogram.edges[-1] == max(values)


def test_loss_histogram_of_no_or_equal_losses(session: Session):
    project = make_project(session, n_samples=4)
    job = repo.create_job(session, project.id, "score")
    assert repo.loss_histogram(session, job.id, bins=3).counts == [0, 0, 0]
    repo.add_scores(session, job.id, [{"sample_id": i, "loss": 0.7} for i in (1, 2, 3)])
    assert repo.loss_histogram(session, job.id, bins=3).counts == [3, 0, 0]
    with pytest.raises(ValueError, match="bins=0"):
        repo.loss_histogram(session, job.id, bins=0)


def test_top_candidates_pages_by_loss_descending_per_label(session: Session):
    project = make_project(session, n_samples=200, n_classes=2)
    job, losses = add_planted_scores(session, project, candidates_per_class=25)
    labels = dict(session.execute(select(Sample.id, Sample.label)).all())
    for label in (0, 1):
        expected = sorted((i for i in losses if labels[i] == label), key=lambda i: -losses[i])[:25]
        pages = [
            repo.top_candidates(session, job.id, label=label, offset=offset, limit=10)
            for offset in (0, 10, 20)
        ]
        assert [len(page) for page in pages] == [10, 10, 5]
        ranked = [row for page in pages for row in page]
        assert [row.sample_id for row in ranked] == expected
        assert [row.rank_in_class for row in ranked] == list(range(25))
        assert all(row.label == label and row.is_candidate for row in ranked)
        assert ranked[0].loss == losses[expected[0]] and ranked[0].path.startswith("images/")
        assert repo.count_candidates(session, job.id, label=label) == 25
    everything = repo.top_candidates(session, job.id, limit=None, candidates_only=False)
    assert [row.loss for row in everything] == sorted(losses.values(), reverse=True)
    assert repo.count_candidates(session, job.id, candidates_only=False) == 200


def test_excluding_and_including_a_candidate(session: Session):
    project = make_project(session, n_samples=40)
    job, _ = add_planted_scores(session, project, candidates_per_class=3)
    first = repo.top_candidates(session, job.id, label=0, limit=1)[0]
    repo.set_candidate_excluded(session, job.id, first.sample_id, True)
    kept = repo.top_candidates(session, job.id, limit=None, include_excluded=False)
    assert first.sample_id not in {row.sample_id for row in kept} and len(kept) == 5
    assert repo.top_candidates(session, job.id, label=0, limit=1)[0].excluded
    repo.set_candidate_excluded(session, job.id, first.sample_id, False)
    assert repo.count_candidates(session, job.id, include_excluded=False) == 6
    with pytest.raises(ValueError, match="no score"):
        repo.set_candidate_excluded(session, job.id, 999, True)


def test_add_scores_rejects_foreign_samples_and_non_finite_losses(session: Session):
    project = make_project(session, n_samples=3)
    job = repo.create_job(session, project.id, "score")
    with pytest.raises(ValueError, match="not in the project"):
        repo.add_scores(session, job.id, [{"sample_id": 999, "loss": 1.0}])
    with pytest.raises(ValueError, match="not finite"):
        repo.add_scores(session, job.id, [{"sample_id": 1, "loss": float("nan")}])


def test_candidate_queries_over_200k_scores_are_correct_and_indexed(session: Session):
    project = make_project(session, n_samples=200_000, n_classes=10)
    job, losses = add_planted_scores(session, project, candidates_per_class=100)
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        statements.append((statement, parameters))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        page = repo.top_candidates(session, job.id, label=7, offset=50, limit=25)
        all_scored = repo.top_candidates(session, job.id, label=7, limit=5, candidates_only=False)
        histogram = repo.loss_histogram(session, job.id, bins=40, label=7)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    labels = dict(session.execute(select(Sample.id, Sample.label)).all())
    in_class = sorted((i for i in losses if labels[i] == 7), key=lambda i: -losses[i])
    assert [row.sample_id for row in page] == in_class[50:75]
    assert [row.sample_id for row in all_scored] == in_class[:5]
    assert sum(histogram.counts) == 20_000
    connection = session.connection()
    for statement, parameters in statements:
        explained = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        plan = " | ".join(row[-1] for row in explained)
        assert "INDEX" in plan and "SCAN" not in plan, plan


def test_score_columns_copy_label_and_bias(session: Session):
    project = make_project(session, n_samples=30)
    job, losses = add_planted_scores(session, project)
    columns = repo.score_columns(session, job.id)
    assert sorted(zip(columns.sample_ids, columns.losses)) == sorted(losses.items())
    assert sum(columns.is_candidate) == 6 and not any(columns.excluded)
    samples = {s.id: s for s in repo.list_samples(session, project.id)}
    for sample_id, label, bias in zip(columns.sample_ids, columns.labels, columns.biases):
        assert (samples[sample_id].label, samples[sample_id].bias) == (label, bias)
    assert repo.score_columns(session, 999).losses == []
    score = repo.get_score(session, job.id, columns.sample_ids[0])
    assert score.loss == columns.losses[0] and repo.get_score(session, job.id, 999) is None


# --- captions and prompts ------------------------------------------------------------------


def test_captions_and_prompts_round_trip(session: Session):
    project = make_project(session)
    job = repo.create_job(session, project.id, "caption", {"model": "blip"})
    rows = [{"sample_id": 1, "text": "a bird on land", "source": "blip", "params": {"beams": 3}}]
    assert repo.add_captions(session, job.id, rows) == 1
    [caption] = repo.list_captions(session, job.id)
    assert (caption.text, caption.params) == ("a bird on land", {"beams": 3})

    prompts = repo.save_prompts(
        session,
        project.id,
        job.id,
        [
            {
                "sample_id": 1,
                "label": 0,
                "text_original": "a bird on land",
                "matched_words": ["land"],
            },
            {"label": 1, "text_original": "a bird on water", "keep": False},
        ],
    )
    first, second = prompts
    assert first.id < second.id and first.text == "a bird on land" and first.keep
    repo.update_prompt(session, first.id, text="a waterbird on land")
    assert (first.text_original, first.text_edited, first.text) == (
        "a bird on land",
        "a waterbird on land",
        "a waterbird on land",
    )
    repo.update_prompt(session, first.id, text="a bird on land")  # editing back clears the edit
    assert first.text_edited is None
    repo.update_prompt(session, second.id, keep=True)
    kept = repo.list_prompts(session, project.id, kept_only=True)
    assert [p.id for p in kept] == [first.id, second.id]
    assert [p.id for p in repo.list_prompts(session, project.id, label=1)] == [second.id]
    assert repo.list_prompts(session, project.id, job_id=job.id)[0].matched_words == ["land"]
    with pytest.raises(ValueError, match="no prompts row with id 999"):
        repo.update_prompt(session, 999, keep=False)


def test_captions_of_one_sample_and_prompt_class_edits(session: Session):
    project = make_project(session)
    job = repo.create_job(session, project.id, "caption")
    repo.add_captions(session, job.id, [{"sample_id": i, "text": f"t{i}", "source": "m"}
                                        for i in (1, 2, 1)])
    assert [c.text for c in repo.list_captions(session, job.id, sample_id=1)] == ["t1", "t1"]
    [prompt] = repo.save_prompts(session, project.id, None, [{"label": 0, "text_original": "a"}])
    repo.update_prompt(session, prompt.id, label=1)
    assert repo.get_prompt(session, prompt.id).label == 1 and prompt.text == "a"


# --- generated images ----------------------------------------------------------------------


def test_add_generated_image_is_idempotent_on_prompt_and_seed(session: Session):
    project = make_project(session)
    job = repo.create_job(session, project.id, "generate")
    [prompt] = repo.save_prompts(session, project.id, None, [{"label": 0, "text_original": "a"}])
    first = repo.add_generated_image(
        session, job_id=job.id, prompt_id=prompt.id, path="generated/a.png", seed=7, model="sd15"
    )
    again = repo.add_generated_image(
        session, job_id=job.id, prompt_id=prompt.id, path="generated/b.png", seed=7, model="sd15"
    )
    other_seed = repo.add_generated_image(
        session, job_id=job.id, prompt_id=prompt.id, path="generated/c.png", seed=8, model="sd15"
    )
    assert again.id == first.id and again.path == "generated/a.png" and first.accepted is None
    assert session.scalar(select(func.count()).select_from(GeneratedImage)) == 2
    repo.set_image_accepted(session, other_seed.id, True)
    of_job = repo.list_generated_images(session, job_id=job.id)
    assert [i.id for i in of_job] == [first.id, other_seed.id]
    accepted = repo.list_generated_images(session, project_id=project.id, accepted_only=True)
    assert [i.id for i in accepted] == [other_seed.id]
    with pytest.raises(ValueError, match="job_id, project_id or prompt_ids"):
        repo.list_generated_images(session)


def test_generated_images_by_prompt_review_and_delete(session: Session):
    project = make_project(session)
    job = repo.create_job(session, project.id, "generate")
    one, two = repo.save_prompts(session, project.id, None, [
        {"label": 0, "text_original": "a"}, {"label": 1, "text_original": "b"}])
    images = [repo.add_generated_image(session, job_id=job.id, prompt_id=p.id,
                                       path=f"generated/{p.id}-{seed}.png", seed=seed, model="m")
              for p in (one, two) for seed in (1, 2)]
    assert [i.id for i in repo.list_generated_images(session, prompt_ids=[two.id])] == [
        images[2].id, images[3].id]
    assert repo.set_images_accepted(session, [images[0].id, images[2].id], False) == 2
    repo.set_image_accepted(session, images[1].id, True)
    kept = repo.list_generated_images(session, project_id=project.id, exclude_rejected=True)
    assert [i.id for i in kept] == [images[1].id, images[3].id]  # accepted and unreviewed
    assert repo.delete_generated_images(session, [images[0].id]) == 1
    assert repo.get_generated_image(session, images[0].id) is None
    assert repo.delete_generated_images(session, []) == 0


# --- trained models ------------------------------------------------------------------------


def test_models_latest_by_role(session: Session):
    project = make_project(session)
    job = repo.create_job(session, project.id, "biased_train")
    first = repo.add_model(session, project.id, role="biased", weights_path="w/1", arch="r18")
    second = repo.add_model(
        session,
        project.id,
        role="biased",
        weights_path="weights/2.safetensors",
        arch="r18",
        job_id=job.id,
        metrics={"acc": 0.8},
    )
    # the model of a job that has not finished (or was killed before it did) is not used
    assert repo.latest_model(session, project.id, "biased").id == first.id
    assert [m.id for m in repo.list_models(session, project.id)] == [first.id]
    repo.finish_job(session, job.id, "done")
    assert repo.latest_model(session, project.id, "biased").id == second.id
    assert repo.latest_model(session, project.id, "debiased") is None
    assert [m.id for m in repo.list_models(session, project.id)] == [second.id, first.id]


def test_a_new_baseline_is_stored_under_its_own_role_with_no_storage_edit(session: Session):
    project = make_project(session, n_samples=2)
    dfa = repo.add_model(session, project.id, role="dfa", weights_path="weights/dfa", arch="r18")
    longest = "a" + "-b3" * 10 + "c"  # 32 characters: the width of models.role
    repo.add_model(session, project.id, role=longest, weights_path="weights/l", arch="r18")
    for role in ModelRole:  # the app's own roles are slugs too
        repo.add_model(session, project.id, role=role, weights_path=f"weights/{role}", arch="r18")
    session.expire_all()  # read the roles back from the database, not the identity map
    assert repo.latest_model(session, project.id, "dfa").id == dfa.id
    assert [m.role for m in repo.list_models(session, project.id, "dfa")] == ["dfa"]
    assert repo.latest_model(session, project.id, longest).role == longest
    stored = {m.role for m in repo.list_models(session, project.id)}
    assert stored == {"dfa", longest, *(role.value for role in ModelRole)}


@pytest.mark.parametrize("bad", ["Bad Role!", "", "Debiased", "group_dro", "1st", "-dfa",
                                 "dfa\n", " dfa", "a" * 33, None])
def test_add_model_refuses_a_role_that_is_not_a_short_lower_case_slug(session: Session, bad):
    project = make_project(session, n_samples=2)
    with pytest.raises(ValueError, match="lower-case") as refused:
        repo.add_model(session, project.id, role=bad, weights_path="weights/x", arch="r18")
    assert repr(bad) in str(refused.value)  # names the bad value
    assert repo.list_models(session, project.id) == []


def test_set_candidates_marks_exactly_the_given_samples(session: Session):
    """The next round's candidates replace a scoring job's flags, exclusions included."""
    project = make_project(session, n_samples=40)
    job, _ = add_planted_scores(session, project, candidates_per_class=3)
    first = repo.top_candidates(session, job.id, label=0, limit=1)[0]
    repo.set_candidate_excluded(session, job.id, first.sample_id, True)
    others = [row.sample_id for row in repo.top_candidates(
        session, job.id, limit=None, candidates_only=False)][-2:]  # two lowest losses
    assert repo.set_candidates(session, job.id, {others[0]: 0, others[1]: 1}) == 2
    now = repo.top_candidates(session, job.id, limit=None)
    assert {row.sample_id for row in now} == set(others) and not any(r.excluded for r in now)
    assert sorted(row.rank_in_class for row in now) == [0, 1]
    with pytest.raises(ValueError, match="have no score"):
        repo.set_candidates(session, job.id, {999: 0})
    assert repo.set_candidates(session, job.id, {}) == 0
    assert repo.count_candidates(session, job.id) == 0
