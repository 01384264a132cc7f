"""The command line and the app run the same stage functions: for the same dataset, seed and
prompts they pick the same candidates, caption them alike, and write byte-identical generated
images (one plan, one seed per prompt and image index, one PNG encoding)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from diffubias.config import RunConfig
from diffubias.pipeline import read_candidates, run_stages
from diffubias.run_folder import Run
from storage import repository as repo
from storage.models import JobKind
from tests.ui_support import link_demo_dataset
from ui import bias_service, caption_service, generate_service
from ui.studio import Studio, default_project

SETTINGS = {"width": 8, "biased_epochs": 1, "top_k": 3, "seed": 0, "batch_size": 256,
            "images_per_prompt": 2, "max_images": 24}


@pytest.fixture(scope="module")
def both(tmp_path_factory, builtin_cache, one_torch_thread):
    """The demo dataset through detect .. generate once from the CLI and once from the app."""
    root = tmp_path_factory.mktemp("front-ends")
    config = RunConfig(dataset="builtin:colored-digits", conflict_ratio=0.01,
                       cache_dir=str(builtin_cache), **SETTINGS)
    run = Run.create(root / "run", config)
    run_stages(run, ("detect", "caption", "filter", "generate"))

    link_demo_dataset(builtin_cache, root / "workspace")
    studio = Studio.open(root / "workspace")
    studio.start_background_work()
    studio.wait_for_demo()
    project_id = default_project(studio)
    bias_service.train_biased(studio, project_id, SETTINGS)  # the same RunConfig fields
    caption_service.run_captioner(studio, project_id, {})
    generate_service.run_generation(studio, project_id, SETTINGS)
    yield run, studio, project_id
    studio.close()


def test_same_candidates(both):
    run, studio, project_id = both
    with studio.store.sessions() as session:
        job = repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)
        app = [c.position for c in repo.top_candidates(session, job.id, limit=None)]
    cli = read_candidates(run)
    assert len(cli) == 30  # 3 per class
    assert sorted(app) == sorted(cli)


def test_same_prompts_and_byte_identical_images(both):
    run, studio, project_id = both
    with open(run.out_dir / "generated" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cli = {Path(r["file"]).stem: (run.out_dir / "generated" / r["file"]).read_bytes()
           for r in rows}
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        _, images = generate_service.current_images(session, project_id)
        app = {image.params["key"]: workspace.resolve(image.path).read_bytes()
               for image in images}
    assert len(cli) == SETTINGS["max_images"]
    assert set(app) == set(cli)
    assert all(app[key] == cli[key] for key in cli)


def test_the_same_checks_of_every_image(both):
    """The verify stage runs in both: the same caption, loss and verdict per image."""
    run, studio, project_id = both
    with open(run.out_dir / "generated" / "manifest.csv", newline="") as f:
        cli = {Path(r["file"]).stem: r for r in csv.DictReader(f)}
    with studio.store.sessions() as session:
        _, images = generate_service.current_images(session, project_id)
        app = {image.params["key"]: image.params["checks"] for image in images}
    assert set(app) == set(cli)
    for key, row in cli.items():
        checks = app[key]
        assert row["check_caption"] == checks["caption"]
        assert float(row["bias_loss"]) == pytest.approx(checks["bias_loss"], rel=1e-5)
        assert int(row["hash_distance"]) == checks["hash_distance"]
        assert row["proposed_reject"] == "; ".join(checks["reasons"])
