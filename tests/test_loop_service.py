"""The closed loop in the app (`ui.loop_service`, `ui.rounds`) on the demo project with tiny
settings: round 1 as tab 2-5 make it, re-scored with its debiased model; round 2 started on two
classes, captioned, generated and trained, with round 1's images still in training; the rounds
compared side by side; steps out of order say what to do first."""

from __future__ import annotations

import pytest

from storage import repository as repo
from storage.models import JobKind
from tests.ui_support import TINY_BIAS, TINY_DEBIAS_EPOCHS, TINY_GENERATE, link_demo_dataset
from ui import (
    bias_service,
    caption_service,
    debias_service,
    generate_service,
    loop_service,
    report_service,
)
from ui.rounds import rounds, training_images
from ui.studio import Studio, default_project


@pytest.fixture(scope="module")
def loop(tmp_path_factory, builtin_cache):
    root = tmp_path_factory.mktemp("workspace")
    link_demo_dataset(builtin_cache, root)
    studio = Studio.open(root)
    studio.start_background_work()
    studio.wait_for_demo()
    pid = default_project(studio)
    views = {"pid": pid}
    bias_service.train_biased(studio, pid, TINY_BIAS)
    with pytest.raises(ValueError, match="no debiased model for round 1 yet"):
        loop_service.rescore_round(studio, pid)
    views["before"] = loop_service.loop_view(studio, pid)
    caption_service.run_captioner(studio, pid, {})
    generate_service.run_generation(studio, pid, TINY_GENERATE)
    assert generate_service.generation_view(studio, pid).stale == ""
    views["round1"] = debias_service.train_debiased_models(
        studio, pid, {"debias_epochs": TINY_DEBIAS_EPOCHS})
    with pytest.raises(ValueError, match="re-score the training set"):
        loop_service.start_next_round(studio, pid, ["zero"])
    views["rescored1"] = loop_service.rescore_round(studio, pid)
    yield studio, views
    studio.close()


def test_rescoring_shows_what_the_debiased_model_leaves(loop):
    studio, views = loop
    assert views["before"].round == 1 and "train the debiased model" in views["before"].note
    view = views["rescored1"]
    assert view.round == 1 and view.rescore_job_id is not None
    summary = view.summary
    assert summary["round"] == 1 and summary["n_scored"] == 10000
    assert summary["n_candidates"] == 200  # top-K 2 % of each 1000-sample class
    assert len(summary["classes"]) == 10 and summary["mean_true_gap"] is not None
    assert 0 < summary["n_still_wrong"] <= summary["n_candidates"]
    assert len(view.still_wrong) == min(summary["n_still_wrong"], loop_service.STILL_WRONG_SHOWN)
    assert view.figure is not None and "start round 2" in view.note
    with studio.store.sessions() as session:
        scores = repo.score_columns(session, view.rescore_job_id)
    assert len(scores.losses) == 10000
    assert sum(scores.is_candidate) == summary["n_next_candidates"] > 0


def test_round_two_trains_on_the_images_of_both_rounds(loop):
    studio, views = loop
    pid = views["pid"]
    with pytest.raises(ValueError, match="unknown class 'eleven'"):
        loop_service.start_next_round(studio, pid, ["eleven"])
    with pytest.raises(ValueError, match="at least one class"):
        loop_service.start_next_round(studio, pid, [])
    started = loop_service.start_next_round(studio, pid, ["zero", 1])  # a name, an index
    assert started.round == 2 and "Caption them in tab 3" in started.note
    names = started.class_names
    chosen = (names.index("zero"), 1)
    with studio.store.sessions() as session:
        found = rounds(session, pid)
        assert [r.number for r in found] == [1, 2] and found[1].classes == tuple(sorted(chosen))
        n_candidates = repo.count_candidates(session, found[1].source_job_id)
    assert n_candidates == 2 * 20  # top-K 2 % of each 1000-sample class
    assert "Round 2 has started" in caption_service.captions_view(studio, pid).stale
    assert generate_service.generation_view(studio, pid).stale == "“Start the next round”"
    with pytest.raises(ValueError, match="re-score the training set"):
        loop_service.start_next_round(studio, pid, ["zero"])  # round 2 is not re-scored yet

    captions = caption_service.run_captioner(studio, pid, {})
    assert {row.label for row in captions.prompts} <= {names[c] for c in chosen}
    assert captions.prompts
    assert captions.stale is None
    generate_service.run_generation(studio, pid, TINY_GENERATE)
    assert generate_service.generation_view(studio, pid).stale == ""
    with studio.store.sessions() as session:
        per_round = training_images(session, pid)
    assert [number for number, _, _ in per_round] == [1, 2]
    n1, n2 = (len(images) for _, _, images in per_round)
    assert n1 > 0 and n2 > 0
    debias_service.train_debiased_models(studio, pid, {"debias_epochs": TINY_DEBIAS_EPOCHS})
    with studio.store.sessions() as session:
        job = repo.latest_job(session, pid, JobKind.DEBIAS)
    assert job.params["round"] == 2 and len(job.params["image_ids"]) == n1 + n2
    assert job.params["images_per_round"] == {"1": n1, "2": n2}

    view = loop_service.rescore_round(studio, pid)
    assert view.round == 2 and view.summary["round"] == 2
    first, second = view.rounds
    assert (first.number, second.number) == (1, 2)
    assert first.n_images == n1 and second.n_images == n1 + n2
    assert first.test and second.test and second.source.startswith("the round-1 debiased")
    assert first.n_still_wrong is not None and second.n_still_wrong is not None

    # the report compares the rounds
    content = report_service.report_content(studio, pid)
    assert [r["round"] for r in content.rounds] == [1, 2]


def test_training_the_biased_model_again_starts_over_at_round_one(loop):
    studio, views = loop
    pid = views["pid"]
    bias_service.train_biased(studio, pid, TINY_BIAS)
    view = loop_service.loop_view(studio, pid)
    assert view.round == 1 and len(view.rounds) == 1 and view.rounds[0].test == {}
