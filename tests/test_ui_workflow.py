"""The app's handlers as plain functions: the whole workflow on the demo project with tiny
settings, in a fresh workspace, then a restart of the app on the same workspace."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffubias.stages.detect import whole_classes
from storage import repository as repo
from storage.models import JobKind, JobStatus
from tests.ui_support import (
    TINY_BIAS,
    TINY_CAM_SAMPLES,
    TINY_DEBIAS_EPOCHS,
    TINY_GENERATE,
    link_demo_dataset,
)
from ui import (
    bias_service,
    caption_service,
    dataset_service,
    debias_service,
    generate_service,
    gradcam_service,
    report_service,
    tab_bias,
)
from ui.datasets import DEMO_NAME
from ui.studio import Studio, default_project, job_status, project_choices, revision, stop_job


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, builtin_cache):
    """A workspace where the demo project went through every stage once, with the views the
    handlers returned along the way."""
    root = tmp_path_factory.mktemp("workspace")
    link_demo_dataset(builtin_cache, root)
    studio = Studio.open(root)
    studio.start_background_work()
    studio.wait_for_demo()
    project_id = default_project(studio)
    steps = []
    views = {"project_id": project_id}
    views["detection"] = bias_service.train_biased(
        studio, project_id, TINY_BIAS, ui=lambda f, m: steps.append((f, m)))
    views["progress"] = steps
    first = bias_service.candidate_page(studio, project_id, page=1, page_size=10)
    views["excluded"] = first.sample_ids[0]
    bias_service.set_excluded(studio, project_id, first.sample_ids[0], True)
    views["captions"] = caption_service.run_captioner(studio, project_id, {})
    views["generation"] = generate_service.run_generation(studio, project_id, TINY_GENERATE)
    views["debias"] = debias_service.train_debiased_models(
        studio, project_id, {"debias_epochs": TINY_DEBIAS_EPOCHS})
    views["gradcam"] = gradcam_service.run_gradcam(studio, project_id,
                                                   {"cam_samples": TINY_CAM_SAMPLES})
    yield studio, views
    studio.close()


def test_the_demo_project_is_created_on_an_empty_workspace(workflow):
    studio, views = workflow
    assert project_choices(studio) == [(DEMO_NAME, views["project_id"])]
    view = dataset_service.dataset_view(studio, views["project_id"])
    assert view.summary["split_sizes"] == {"train": 10000, "valid": 1000, "test": 2000}
    assert view.summary["has_bias"] and view.summary["n_captioned"] == 13000
    assert [row[1] for row in view.class_counts] == [1000] * 10
    assert view.count_headers[-1] == "bias-conflicting in train"
    assert sum(row[-1] for row in view.class_counts) == 100  # 1 % planted conflicts
    assert len(view.tiles) == 10 * dataset_service.SAMPLES_PER_CLASS
    assert all(Path(path).is_file() for path, _ in view.tiles)


def test_detection_stores_scores_candidates_and_the_model(workflow):
    studio, views = workflow
    view = views["detection"]
    assert view.n_scored == 10000 and view.n_candidates == 200
    assert {"precision_at_k", "recall_at_k", "r_precision", "auroc"} <= set(view.metrics)
    assert set(view.test) >= {"overall", "aligned", "conflicting", "unbiased"}
    # one histogram: the aligned / conflicting split reads the bias column, hidden while a
    # person reviews (test_the_review_does_not_see_the_ground_truth_unless_asked)
    assert view.histogram is not None and len(view.histogram.data) == 1
    assert [f for f, _ in views["progress"]] == sorted(f for f, _ in views["progress"])
    # is it biased: its own train and validation accuracy per epoch, read by no bias label;
    # the demo's shortcut is strong, so no warning
    diagnostics = view.biased_model
    assert view.params["ranker"] == diagnostics["ranker"] == "gce"
    assert len(diagnostics["epochs"]) == TINY_BIAS["biased_epochs"]
    assert diagnostics["train_accuracy"] > diagnostics["valid_accuracy"] + 0.3
    assert diagnostics["warning"] is None
    shown = tab_bias.metrics_markdown(view)
    assert "ranker **gce**" in shown and "⚠" not in shown
    unbiased = {**diagnostics, "warning": "The biased model may not be biased: try gce_q 1"}
    assert "⚠ The biased model may not be biased: try gce\\_q 1" in "\n".join(
        tab_bias.biased_model_lines(unbiased))
    with studio.store.sessions() as session:
        model = repo.latest_model(session, views["project_id"], "biased")
        assert studio.store.workspace.resolve(model.weights_path).is_file()
        job = repo.get_job(session, view.job_id)
        assert job.status == JobStatus.DONE and job.timings["total"] > 0


def test_candidate_pages_are_sorted_by_loss_and_cover_every_candidate(workflow):
    studio, views = workflow
    pid = views["project_id"]
    pages = [bias_service.candidate_page(studio, pid, page=n, page_size=64) for n in (1, 2, 3, 4)]
    assert [len(p.sample_ids) for p in pages] == [64, 64, 64, 8]
    assert pages[0].n_pages == 4 and pages[0].total == 200
    assert len({s for p in pages for s in p.sample_ids}) == 200
    losses = [float(c.split(" · ")[1].split()[0]) for p in pages for _, c in p.tiles]
    assert losses == sorted(losses, reverse=True)
    one_class = bias_service.candidate_page(studio, pid, label=3, page=1, page_size=100)
    assert one_class.total == 20
    assert bias_service.candidate_page(studio, pid, page=99, page_size=64).page == 4  # clamped


def test_a_class_histogram_draws_that_class_threshold(workflow):
    studio, views = workflow
    three = dataset_service.dataset_view(studio, views["project_id"]).class_names.index("three")
    view = bias_service.detection_view(studio, views["project_id"], label=three)
    assert sum(sum(trace.y) for trace in view.histogram.data) == 1000
    assert view.histogram.layout.title.text.endswith("class three")
    assert "top-K threshold" in view.histogram.layout.annotations[0].text
    assert "20 at or above" in view.histogram.layout.annotations[0].text  # K = 20 for a class
    # across classes the line is the lowest class threshold: it counts candidates, not samples
    every = bias_service.detection_view(studio, views["project_id"]).histogram
    assert "lowest per-class top-K threshold" in every.layout.annotations[0].text
    assert "200 candidates, " in every.layout.annotations[0].text


def test_an_excluded_candidate_is_not_captioned(workflow):
    studio, views = workflow
    detail = bias_service.sample_detail(studio, views["project_id"], views["excluded"])
    assert detail.excluded and Path(detail.image).is_file()
    captions = views["captions"]
    assert captions.n_images == 199 and captions.n_captions == 3 * 199
    with studio.store.sessions() as session:
        sample = repo.get_sample(session, views["excluded"])
    assert sample.id not in {p.sample_id for p in captions.prompts}


def test_captions_become_a_prompt_table_and_keywords(workflow):
    _, views = workflow
    captions = views["captions"]
    assert captions.top_f == 20 and len(captions.top_words) == 20  # 2 x 10 classes
    assert captions.prompts and all(p.keep == bool(p.matched_words) for p in captions.prompts)
    assert all(Path(p.thumbnail).is_file() for p in captions.prompts[:5])
    if caption_service.keywords_available():
        assert set(captions.keywords) <= set(captions.class_names) and captions.keywords


def test_prompt_edits_are_saved_and_checked(workflow):
    studio, views = workflow
    pid = views["project_id"]
    first = caption_service.captions_view(studio, pid).prompts[0]
    edit = {"id": first.prompt_id, "keep": True, "class": "seven",
            "text": "  a  red seven on a black background "}
    view, changed = caption_service.save_prompt_edits(studio, pid, [edit])
    row = next(p for p in view.prompts if p.prompt_id == first.prompt_id)
    assert changed == 1 and row.edited and row.label == "seven"
    assert row.text == "a red seven on a black background" and row.original == first.original
    assert caption_service.save_prompt_edits(studio, pid, [edit])[1] == 0  # nothing new
    with pytest.raises(ValueError, match="unknown class 'sevn'"):
        caption_service.save_prompt_edits(studio, pid, [{**edit, "class": "sevn"}])
    with pytest.raises(ValueError, match="no text"):
        caption_service.save_prompt_edits(studio, pid, [{**edit, "text": " "}])
    pasted = {**edit, "text": "a red seven " * 500}  # a paste accident: 6,000 characters
    with pytest.raises(ValueError, match=r"row 1 .* is 5,999 characters long; keep it under"):
        caption_service.save_prompt_edits(studio, pid, [pasted])
    assert caption_service.captions_view(studio, pid).prompts[0].text == edit["text"].strip() \
        .replace("  ", " ")  # nothing of the rejected edit was saved
    # an edited text's matched words are the filter's top words it now contains
    top = view.top_words[0][0]
    for text, matched in ((f"zzz {top}", [top]), ("zzz qqq", [])):
        view, _ = caption_service.save_prompt_edits(studio, pid, [{**edit, "text": text}])
        row = next(p for p in view.prompts if p.prompt_id == first.prompt_id)
        assert row.matched_words == matched, (text, row.matched_words)
    caption_service.save_prompt_edits(studio, pid, [{**edit, "class": first.label,
                                                     "text": first.original}])
    restored = caption_service.captions_view(studio, pid).prompts[0]
    assert not restored.edited and restored.label == first.label
    assert restored.matched_words == first.matched_words


def test_applying_the_filter_again_makes_a_new_table(workflow):
    studio, views = workflow
    pid = views["project_id"]
    view = caption_service.apply_filter(studio, pid, {"top_f": 3,
                                                      "extra_stop_words": "Black, digit"})
    assert view.top_f == 3 and "black" not in dict(view.top_words)
    assert view.extra_stop_words == ["black", "digit"]
    assert sum(p.keep for p in view.prompts) < sum(p.keep for p in views["captions"].prompts)
    with pytest.raises(ValueError, match="top_f must be an integer from 0 to 100,000; got -1"):
        caption_service.apply_filter(studio, pid, {"top_f": -1})
    with pytest.raises(ValueError, match="unknown settings 'stop_words'"):
        caption_service.apply_filter(studio, pid, {"stop_words": "black"})
    assert caption_service.captions_view(studio, pid).top_f == 3  # refused: nothing changed
    # back to the defaults for the later stages (None would keep the project's settings)
    caption_service.apply_filter(studio, pid, {"top_f": 0, "extra_stop_words": ""})


def test_generation_is_grouped_by_prompt_and_resumes(workflow):
    studio, views = workflow
    pid = views["project_id"]
    assert views["generation"].n_images == 40
    # the filter ran again since (a new prompt table): its prompts get images of their own
    view = generate_service.run_generation(studio, pid, TINY_GENERATE)
    with studio.store.sessions() as session:
        _, images = generate_service.current_images(session, pid)
        first = repo.latest_job(session, pid, JobKind.GENERATE)
    assert len(images) == 40 and first.result["n_new"] == 40
    again = generate_service.run_generation(studio, pid, {})  # the same request, as stored
    with studio.store.sessions() as session:
        second = repo.latest_job(session, pid, JobKind.GENERATE)
    assert second.result["n_new"] == 0 and second.result["n_kept"] == 40  # nothing redone
    assert again.n_images == 40 and view.columns == 2
    by_prompt = {}
    for image in images:
        by_prompt.setdefault(image.prompt_id, []).append(image.seed)
        assert studio.store.workspace.resolve(image.path).is_file()
    assert all(len(seeds) == 2 and len(set(seeds)) == 2 for seeds in by_prompt.values())


def test_reviewing_images_decides_what_training_uses(workflow):
    studio, views = workflow
    pid = views["project_id"]
    view = generate_service.generation_view(studio, pid)
    first = view.image_ids[0]
    assert generate_service.review_images(studio, pid, [first], False) == 1
    detail = generate_service.image_detail(studio, pid, first)
    assert detail.accepted is False and Path(detail.image).is_file()
    generate_service.review_prompt(studio, pid, view.image_ids[2], True)
    view = generate_service.generation_view(studio, pid)
    assert (view.n_rejected, view.n_accepted) == (1, 2)
    with pytest.raises(ValueError, match="not among"):
        generate_service.review_images(studio, pid, [10**6], True)


def test_debiasing_compares_three_models(workflow):
    _, views = workflow
    view = views["debias"]
    assert [r.role for r in view.rows] == ["biased", "vanilla", "debiased"]
    assert view.n_generated == 40
    debiased = view.rows[-1]
    assert debiased.n_train == 10000 + 40 and debiased.epochs == 1
    assert view.rows[0].n_train == 10000  # the biased model: the train split
    assert all(0 <= r.test["overall"] <= 1 for r in view.rows)
    assert view.figure is not None and len(view.figure.data) == 3


def test_gradcam_pairs_explain_conflicting_test_samples(workflow):
    studio, views = workflow
    view = views["gradcam"]
    assert view.n_samples == TINY_CAM_SAMPLES and view.sample_set == "conflicting"
    assert len(view.tiles) == 3 * min(TINY_CAM_SAMPLES, gradcam_service.ROWS_PER_PAGE)
    assert all(Path(path).is_file() for path, _ in view.tiles)
    assert view.figure is None and view.mean_mass_before is None  # digits have no masks
    # the fair "before" by default: the vanilla model, same data and schedule
    assert view.before_role == "vanilla" and list(view.agreement) == ["vanilla", "debiased"]
    assert view.tiles[1][1].startswith("vanilla: ")
    with Image.open(view.tiles[1][0]) as overlay:
        assert overlay.size == (112, 112)
    with studio.store.sessions() as session:
        job = repo.latest_job(session, views["project_id"], JobKind.GRADCAM)
    positions = [s["position"] for s in job.result["samples"]]
    data = studio.datasets.get(views["project_id"])
    assert data.conflicts(np.asarray(positions)).all()


def test_gradcam_can_compare_with_the_biased_model_and_names_what_is_missing(workflow,
                                                                            tmp_path):
    studio, views = workflow
    pid = views["project_id"]
    biased = gradcam_service.run_gradcam(studio, pid, {"cam_samples": 4, "cam_before": "biased"})
    assert biased.before_role == "biased" and list(biased.agreement) == ["biased", "debiased"]
    with pytest.raises(ValueError, match="cam_before must be one of vanilla, biased"):
        gradcam_service.run_gradcam(studio, pid, {"cam_before": "lff"})
    # back to the default for the tests after this one
    gradcam_service.run_gradcam(studio, pid, {"cam_samples": TINY_CAM_SAMPLES,
                                              "cam_before": "vanilla"})


def test_export_writes_a_self_contained_report_and_downloads(workflow):
    studio, views = workflow
    exported = report_service.export_report(studio, views["project_id"])
    page = Path(exported.report).read_text()
    for section in ("1. Dataset", "2. Bias detection", "3. Captions", "4. Generated",
                    "5. Accuracy", "6. Where the models look", "Settings"):
        assert section in page
    assert "data:image/webp;base64," in page and "plotly" in page.lower()
    assert "ranker gce" in page and "<th>validation accuracy</th>" in page  # per epoch
    assert "src=\"http" not in page  # nothing fetched from the network
    assert Path(exported.model).suffix == ".safetensors"
    with zipfile.ZipFile(exported.dataset) as archive:
        names = archive.namelist()
        metadata = archive.read("metadata.csv").decode().splitlines()
    assert "metadata.csv" in names and metadata[0].startswith("path,split,label,caption")
    assert len(metadata) - 1 == exported.n_generated == 39  # one rejected


def test_a_restarted_app_finds_everything_and_marks_running_jobs(workflow, tmp_path):
    studio, views = workflow
    pid = views["project_id"]
    with studio.store.sessions.begin() as session:
        stuck = repo.create_job(session, pid, JobKind.GENERATE)
        repo.start_job(session, stuck.id)
    assert job_status(studio, pid).active
    reopened = Studio.open(studio.store.workspace.root)
    try:
        assert project_choices(reopened) == project_choices(studio)
        status = job_status(reopened, pid)
        assert status.status == JobStatus.INTERRUPTED and status.job_id == stuck.id
        assert bias_service.detection_view(reopened, pid).n_scored == 10000
        assert len(debias_service.debias_view(reopened, pid).rows) == 3
        assert gradcam_service.gradcam_view(reopened, pid).n_samples == TINY_CAM_SAMPLES
        assert revision(reopened, pid) == revision(studio, pid)
    finally:
        reopened.store.close()


def test_stop_cancels_the_running_job(workflow):
    studio, views = workflow
    pid = views["project_id"]
    assert stop_job(studio, pid) == "No job is running."
    with studio.store.sessions.begin() as session:
        job = repo.create_job(session, pid, JobKind.DEBIAS)
        repo.start_job(session, job.id)
    assert stop_job(studio, pid) == "■ Stopped “Train debiased model”: nothing of that run was kept."
    assert job_status(studio, pid).status == JobStatus.CANCELLED


def test_steps_out_of_order_say_what_to_do_first(tmp_path, builtin_cache):
    link_demo_dataset(builtin_cache, tmp_path)
    studio = Studio.open(tmp_path)
    try:
        pid = dataset_service.open_builtin(studio, "builtin:colored-digits", 0.01, 0)
        with pytest.raises(ValueError, match="train the biased model"):
            caption_service.run_captioner(studio, pid, {})
        with pytest.raises(ValueError, match="caption the candidates"):
            generate_service.run_generation(studio, pid, {})
        with pytest.raises(ValueError, match="no biased model"):
            debias_service.train_debiased_models(studio, pid, {})
        with pytest.raises(ValueError, match="train both"):
            gradcam_service.run_gradcam(studio, pid, {})
        with pytest.raises(ValueError, match="arch must be one of auto, small-cnn, resnet18"):
            bias_service.train_biased(studio, pid, {"arch": "vgg"})
        with pytest.raises(ValueError, match="unknown settings 'epochs'"):
            bias_service.train_biased(studio, pid, {"epochs": 1})
        assert bias_service.detection_view(studio, pid).job_id is None
        assert generate_service.generation_view(studio, pid).n_images == 0
    finally:
        studio.close()


def test_the_cam_in_object_figure_compares_both_models_with_the_object_area():
    figure = gradcam_service.object_mass_figure(0.31, 0.62, 0.2)
    assert list(figure.data[0].x) == ["vanilla", "debiased"]
    assert list(gradcam_service.object_mass_figure(0.3, 0.6, 0.2, "biased").data[0].x) == [
        "biased", "debiased"]
    assert list(figure.data[0].y) == [0.31, 0.62]
    assert "object area 20.0%" in figure.layout.annotations[0].text
    assert gradcam_service.object_mass_figure(None, None, None) is None  # no masks, no figure


def test_debias_tab_trains_the_chosen_baselines_and_forgets_dropped_ones(workflow):
    """Runs last in this module: it adds debias jobs to the shared workflow."""
    studio, views = workflow
    pid = views["project_id"]
    view = debias_service.train_debiased_models(
        studio, pid, {"debias_epochs": TINY_DEBIAS_EPOCHS, "baselines": ["oversample-topk"]})
    rows = {r.role: r for r in view.rows}
    assert {"biased", "vanilla", "debiased", "oversample-topk"} <= set(rows)
    assert set(rows["oversample-topk"].test) >= {"overall", "aligned", "conflicting", "unbiased"}
    # oversampling repeats the candidates the reviewer kept (one copy each: max_images caps it)
    detection = bias_service.detection_view(studio, pid, with_histogram=False)
    kept = detection.n_candidates - detection.n_excluded
    assert rows["oversample-topk"].n_train == rows["vanilla"].n_train + kept
    assert studio.store.workspace.resolve(rows["oversample-topk"].weights).is_file()
    assert "oversample-topk" in [trace.name for trace in view.figure.data]
    with pytest.raises(ValueError, match="unknown baselines"):
        debias_service.train_debiased_models(studio, pid, {"baselines": ("magic",)})
    view = debias_service.train_debiased_models(studio, pid, {"baselines": []})
    assert "oversample-topk" not in {r.role for r in view.rows}


def test_every_baseline_can_be_stored_as_a_model_role():
    """A baseline's model is stored under its registry name, so each name must be a role the
    store takes; the registry is the only list."""
    from diffubias.baselines import baseline_names
    from storage.models import MODEL_ROLE_PATTERN

    assert baseline_names()
    for name in baseline_names():
        assert MODEL_ROLE_PATTERN.fullmatch(name), name


def test_a_count_k_larger_than_a_class_says_the_class_is_taken_whole():
    from ui.tab_bias import metrics_markdown

    labels = np.array([0] * 30 + [1] * 80)
    assert whole_classes(labels, 50, ["cat", "dog"]) == {"cat": 30}
    assert whole_classes(labels, 0.5, ["cat", "dog"]) == {}
    view = bias_service.DetectionView(1, {}, {}, {"top_k": 50}, 110, 80, 0, 1.0, None,
                                      whole_classes={"cat": 30})
    text = metrics_markdown(view)
    assert "K = 50 is not smaller than these classes" in text and "cat (30)" in text


def test_the_review_does_not_see_the_ground_truth_unless_asked(workflow):
    """No ⚑ on tiles, no aligned/conflicting in a tile's detail and one histogram while a
    person reviews; shown for an audit, counted, and the report says which."""
    from ui import review

    studio, views = workflow
    pid = views["project_id"]
    assert not review.project_truth_shown(studio, pid)
    page = bias_service.candidate_page(studio, pid, page=1, page_size=200)
    assert not any("⚑" in caption for _, caption in page.tiles)
    detail = bias_service.sample_detail(studio, pid, page.sample_ids[0])
    assert detail.conflicting is None and detail.bias is None
    hidden = bias_service.detection_view(studio, pid).histogram
    assert len(hidden.data) == 1  # one histogram, not one per group
    content = report_service.report_content(studio, pid)
    assert content.detection.review["ever_shown"] is False

    review.set_truth_shown(studio, pid, True)
    page = bias_service.candidate_page(studio, pid, page=1, page_size=200)
    assert sum("⚑" in caption for _, caption in page.tiles) > 50  # most candidates conflict
    assert bias_service.sample_detail(studio, pid, page.sample_ids[0]).conflicting is not None
    assert len(bias_service.detection_view(studio, pid).histogram.data) >= 2
    last = page.sample_ids[-1]
    bias_service.set_excluded(studio, pid, last, True)
    bias_service.set_excluded(studio, pid, last, False)
    review.set_truth_shown(studio, pid, False)
    record = report_service.report_content(studio, pid).detection.review
    assert record == {"show_truth": False, "ever_shown": True, "excluded_while_shown": 2}
    assert not review.project_truth_shown(studio, pid)


def test_results_say_when_a_later_step_ran_again(workflow):
    """After the biased model is trained again, the images, the Grad-CAM maps and the report
    say they come from earlier work (the captions and the debias tab say so too). Last in this
    module: it records a newer detection job."""
    studio, views = workflow
    pid = views["project_id"]
    title = "“Train biased model and score samples”"
    views = (lambda: generate_service.generation_view(studio, pid),
             lambda: gradcam_service.gradcam_view(studio, pid),
             lambda: report_service.export_view(studio, pid))
    assert [title in view().stale for view in views] == [False] * 3
    assert generate_service.generation_view(studio, pid).stale == ""
    # (an earlier test trained the debiased model again after the maps and the report)
    assert "“Train debiased model”" in gradcam_service.gradcam_view(studio, pid).stale
    with studio.store.sessions.begin() as session:
        newer = repo.create_job(session, pid, JobKind.BIASED_TRAIN)
        repo.start_job(session, newer.id)
        repo.finish_job(session, newer.id, JobStatus.DONE)
    assert [title in view().stale for view in views] == [True] * 3
    assert generate_service.generation_view(studio, pid).stale == title
