"""Which split the models are scored on, so every table of accuracies can say it.

A dataset with a test split is scored on it. A dataset without one (a plain image folder with
train and valid only) is scored on the validation split, which also chose each model's
checkpoint: its accuracies are optimistic, and every front end says so next to them.
Pure Python: the app's views import it without loading a model library.
"""

from __future__ import annotations

from collections.abc import Mapping

NO_TEST_SPLIT = ("This dataset has no test split, so accuracies are measured on the validation "
                 "split, which also chose each model's checkpoint: they are optimistic. Add a "
                 "test split (the `split` column) for unbiased figures.")


def evaluated_on(split_sizes: Mapping[str, int]) -> str:
    """"test", or "valid" when the dataset has no test images (sizes not known: "test")."""
    return "test" if split_sizes.get("test") or not split_sizes else "valid"


def evaluation_note(split_sizes: Mapping[str, int]) -> str | None:
    """The warning to show beside accuracies, or None when there is a test split."""
    return None if evaluated_on(split_sizes) == "test" else NO_TEST_SPLIT
