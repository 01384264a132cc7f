"""Tiny datasets written to disk for the loader tests (test_dataset, test_metadata_csv,
test_image_folder, test_dataset_sources, test_decoding): 8x8 PNGs and a metadata.csv."""

from pathlib import Path

from PIL import Image


def save_png(path: Path, color=(200, 30, 40), size=(8, 8), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_csv(root: Path, lines: list[str]) -> None:
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def simple_dataset(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A CSV dataset with one 8x8 image per (path, split, label) row."""
    for path, _, _ in rows:
        save_png(root / path)
    write_csv(root, ["path,split,label"] + [",".join(row) for row in rows])
    return root


TWO_CLASSES = [("a/1.png", "train", "cat"), ("a/2.png", "train", "dog"), ("b/3.png", "test", "dog")]
