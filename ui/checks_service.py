"""The automatic checks of generated images in the app: run the verify stage
(`diffubias.stages.verify`) on the current images after generation, store each image's checks in
its params, and say which images training uses.

An image failing a check is proposed for rejection. With `image_checks = "propose"` (the
default) a proposal is advice: the image trains unless a person rejects it. With `"drop"` a
proposed image is left out unless a person accepts it. A person's review always wins.
"""

from __future__ import annotations

from typing import Any

from storage import repository as repo
from storage.models import JobKind, ModelRole
from ui.jobs import JobProgress
from ui.studio import Studio


def proposal(image) -> list[str]:
    """Why the checks propose to reject `image` (a stored generated image); [] when they do not
    (it passed, or was not checked)."""
    return list(image.params.get("checks", {}).get("reasons", []))


def used_for_training(image, image_checks: str) -> bool:
    """Whether the debias stage trains on `image`: a person's review first, then the checks."""
    if image.accepted is not None:
        return bool(image.accepted)
    return not (image_checks == "drop" and proposal(image))


def check_current_images(studio: Studio, project_id: int, config, progress: JobProgress, *,
                         start: float = 0.0, end: float = 1.0) -> dict[str, Any]:
    """Checks every current image not yet checked against the latest detection, reporting on
    [start, end] of the job's bar; returns the verify stage's summary of the images checked now
    ({} when there were none)."""
    from PIL import Image

    from diffubias.models import load_classifier
    from diffubias.stages.verify import check_generated
    from ui.generate_service import current_images

    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        detection = repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)
        biased = repo.latest_model(session, project_id, ModelRole.BIASED)
        if detection is None or biased is None:
            raise ValueError("no biased model to check the images with: train it in tab 2")
        prompts, images = current_images(session, project_id)
        todo = [im for im in images
                if im.params.get("checks", {}).get("detection_job_id") != detection.id]
        if not todo:
            return {}
        columns = repo.score_columns(session, detection.id)
    labels = {p.id: p.label for p in prompts}
    data = studio.datasets.get(project_id)
    span = progress.part(start, end)
    span(0.0, f"checking {len(todo)} generated images")
    result = check_generated(
        [Image.open(workspace.resolve(im.path)).convert("RGB") for im in todo],
        [labels[im.prompt_id] for im in todo], data=data,
        biased_model=load_classifier(workspace.resolve(biased.weights_path)),
        train_losses=columns.losses, train_labels=columns.labels,
        # the candidates a person excluded in tab 2 do not set the bar
        is_candidate=[c and not x for c, x in zip(columns.is_candidate, columns.excluded,
                                                  strict=True)],
        config=config, progress=span)
    progress.check()
    with studio.store.sessions.begin() as session:
        repo.set_image_checks(session, {
            im.id: {**check.to_dict(), "detection_job_id": detection.id}
            for im, check in zip(todo, result.checks, strict=True)})
    return result.summary()


def reject_proposed(studio: Studio, project_id: int) -> int:
    """Rejects every image nobody reviewed that the checks propose to reject; returns how many."""
    from ui.generate_service import current_images

    with studio.store.sessions.begin() as session:
        _, images = current_images(session, int(project_id))
        ids = [im.id for im in images if im.accepted is None and proposal(im)]
        return repo.set_images_accepted(session, ids, False)


def checks_summary(images) -> dict[str, int]:
    """The verify stage's counts over stored images (those checked); {} when none was."""
    from diffubias.stages.verify import count_checks

    checked = [im.params["checks"] for im in images if "checks" in im.params]
    return count_checks(checked) if checked else {}
