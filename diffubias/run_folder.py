"""A run folder of the command line: `config.json`, `report.json`, and the CSVs the stages
write and a person may edit (scores.csv, captions.csv, prompts.csv).

`Run` opens or creates a folder, loads its dataset lazily and merges each stage's part into
report.json; `write_csv`/`read_csv` write and read its CSVs atomically and spreadsheet-safe.
Knows nothing of the stages (`diffubias.pipeline`) or of the HTML report
(`diffubias.run_folder_report`), which both use it.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from diffubias import __version__
from diffubias.config import RunConfig
from diffubias.files import atomic_path, atomic_write_text
from diffubias.prepared import PreparedDataset
from diffubias.text_safety import csv_row, from_csv_cell

Log = Callable[[str], None]
# generated_as: the text the generator gets (class-anchored); shown, recomputed from text on use
PROMPT_FIELDS = ("keep", "label", "text", "source", "source_path", "matched_words",
                 "generated_as")


def prompt_is_kept(cell: str) -> bool:
    """A prompts.csv `keep` cell as a person may have typed it: 1, true or yes."""
    return cell.strip().lower() in ("1", "true", "yes")


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "diffubias": __version__}
    for name in ("torch", "torchvision", "numpy", "scikit-learn", "grad-cam", "plotly",
                 "diffusers", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Run:
    """One run folder: its config, dataset and report, loaded lazily and saved per stage."""

    out_dir: Path
    config: RunConfig
    log: Log = field(default=lambda msg: None)

    @classmethod
    def create(cls, out_dir: Path, config: RunConfig, log: Log | None = None) -> Run:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.json")
        return cls(out_dir, config, log or (lambda msg: None))

    @classmethod
    def open(cls, out_dir: Path, log: Log | None = None) -> Run:
        path = Path(out_dir) / "config.json"
        if not path.exists():
            raise ValueError(f"{out_dir} is not a run folder (no config.json); "
                             "start one with `python -m diffubias run` or `detect`")
        return cls(Path(out_dir), RunConfig.load(path), log or (lambda msg: None))

    @cached_property
    def data(self) -> PreparedDataset:
        data = PreparedDataset.load(self.config)
        for skipped in data.ds.skipped:
            self.log(f"skipped {skipped.path}: {skipped.reason}")
        return data

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    def read_report(self) -> dict:
        return json.loads(self.report_path.read_text()) if self.report_path.exists() else {}

    def update_report(self, *, drop_models: tuple[str, ...] = (), **parts) -> dict:
        """Merges `parts` into report.json (`models` and `timings_s` key by key); `drop_models`
        removes entries of `models` that a stage no longer produces."""
        report = self.read_report()
        for name in drop_models:
            report.get("models", {}).pop(name, None)
        report.update(config=self.config.to_dict(), seed=self.config.seed,
                      versions=library_versions())
        for key, value in parts.items():
            if key in ("models", "timings_s"):
                report.setdefault(key, {}).update(value)
            else:
                report[key] = value
        atomic_write_text(self.report_path, json.dumps(report, indent=2, sort_keys=True))
        return report

    def require(self, name: str, stage: str) -> Path:
        path = self.out_dir / name
        if not path.exists():
            raise ValueError(f"{path} is missing: run the `{stage}` stage first")
        return path


def write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    """Writes a CSV atomically (temp file + rename). Text cells that a spreadsheet would run as a
    formula (=, +, -, @ first) are guarded with a leading quote; `read_csv` takes it off."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(csv_row(list(row)) for row in rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: from_csv_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                for row in csv.DictReader(f)]
