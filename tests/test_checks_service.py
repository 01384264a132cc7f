"""The app's use of the automatic checks (ui.checks_service): a proposal is advice unless the
project says drop, and a person's review always wins. The checks themselves are tested in
test_stage_verify.py, and in the app's workflow in test_app.py."""

from __future__ import annotations

from types import SimpleNamespace

from ui.checks_service import checks_summary, proposal, used_for_training


def test_a_persons_review_wins_over_the_checks_and_drop_leaves_proposals_out():
    """Which stored images the app trains on (ui.checks_service.used_for_training)."""
    def image(accepted, reasons):
        checks = {"checks": {"reasons": reasons}} if reasons is not None else {}
        return SimpleNamespace(accepted=accepted, params=checks)

    failing, passing, unchecked = ["bias-aligned"], [], None
    assert proposal(image(None, failing)) == failing and proposal(image(None, unchecked)) == []
    assert used_for_training(image(None, failing), "propose")  # advice only
    assert not used_for_training(image(None, failing), "drop")
    assert used_for_training(image(True, failing), "drop")  # accepted by a person
    assert not used_for_training(image(False, passing), "propose")  # rejected by a person
    assert used_for_training(image(None, passing), "drop")
    assert used_for_training(image(None, unchecked), "drop")


def test_the_report_counts_the_stored_checks():
    def image(**checks):
        return SimpleNamespace(params={"checks": checks} if checks else {})

    images = [image(reasons=[], shows_class=True, conflicting=True, copy=False),
              image(reasons=["x"], shows_class=False, conflicting=True, copy=False),
              image(reasons=["x", "y"], shows_class=None, conflicting=False, copy=True),
              image()]  # not checked
    assert checks_summary(images) == {"n_images": 3, "n_passed": 1, "n_wrong_class": 1,
                                      "n_aligned": 1, "n_copies": 1}
    assert checks_summary([image()]) == {}
