"""The whole method through the CLI on the built-in datasets, with small settings."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from diffubias.builtin.colored_digits import COLOR_NAMES, MEAN_COLORS
from diffubias.cli import main

FAST = ["--biased-epochs", "2", "--debias-epochs", "1", "--images-per-prompt", "1",
        "--cam-samples", "16", "--width", "8"]


def _run(tmp_path, cache, name, *extra):
    out = tmp_path / name
    assert main(["run", "--out", str(out), "--cache-dir", str(cache), *FAST, *extra]) == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, builtin_cache):
    return _run(tmp_path_factory.mktemp("runs"), builtin_cache, "cd",
                "--dataset", "builtin:colored-digits", "--conflict-ratio", "0.01")


def test_run_writes_every_artifact_and_the_report(digits_run):
    out, report = digits_run
    for name in ("report.json", "config.json", "biased.safetensors", "vanilla.safetensors",
                 "debiased.safetensors", "scores.csv", "captions.csv", "prompts.csv",
                 "loss_histogram.html", "topk_gallery.png", "generated_samples.png",
                 "gradcam.png", "generated/manifest.csv", "report.html", "remaining.json",
                 "next_candidates.csv"):
        assert (out / name).exists(), name
    for key in ("k_per_class", "precision_at_k", "recall_at_k", "r_precision", "auroc"):
        assert key in report["detection"]
    for role in ("biased", "vanilla", "debiased"):
        assert set(report["models"][role]["test"]) >= {"overall", "aligned", "conflicting",
                                                      "unbiased"}
    assert report["gradcam"]["object_mass_before"] is None  # colored digits have no masks
    assert report["gradcam"]["before"] == "vanilla"  # the fair "before" by default
    remaining = json.loads((out / "remaining.json").read_text())
    assert report["remaining"]["n_still_wrong"] == len(remaining["still_wrong"])
    assert remaining["n_candidates"] == report["detection"]["n_selected"]
    assert len(remaining["classes"]) == 10 and remaining["mean_true_gap"] is not None
    assert report["seed"] == 0 and report["config"]["conflict_ratio"] == 0.01
    assert report["versions"]["torch"] and report["timings_s"]["total"] > 0
    assert not list(out.rglob("*.tmp")) and not list(out.glob("*.partial"))


def test_run_writes_the_report_page_the_app_exports(digits_run):
    """report.html, drawn from the run folder: the dataset's classes, each model's accuracies,
    every step, and every image inline."""
    out, report = digits_run
    page = (out / "report.html").read_text()
    names = report["dataset"]["class_names"]
    assert f"<p>{len(names)} classes ({', '.join(names)}); image size 28 px" in page
    assert "7. Rounds of the closed loop" in page
    for role in ("biased", "vanilla", "debiased"):
        test = report["models"][role]["test"]
        assert f"<td>{role}</td>" + "".join(
            f"<td>{test[m]:.1%}</td>" for m in ("overall", "aligned", "conflicting", "unbiased")
        ) in page
    assert "Not run." not in page and page.count('class="plotly-graph-div"') == 2
    sources = re.findall(r'<img src="([^"]*)"', page)  # top-K, generated and Grad-CAM sheets
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_planted_conflicts_rank_on_top(digits_run):
    """colored-digits plants exactly 1 % conflicts; the GCE ranking must find them."""
    out, report = digits_run
    det = report["detection"]
    assert det["n_conflicts"] == 100
    assert det["r_precision"] >= 0.8 and det["auroc"] >= 0.95
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    candidates = [r for r in rows if r["candidate"] == "1"]
    assert len(candidates) == 200  # top_k 2 % of 1000 per class
    assert sum(r["conflict"] == "1" for r in candidates) >= 80


def test_generated_images_keep_label_prompt_and_seed(digits_run):
    out, report = digits_run
    with open(out / "generated" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "prompts.csv", newline="") as f:
        kept = [r for r in csv.DictReader(f) if r["keep"] == "1"]
    assert len(rows) == len(kept) == report["generation"]["n_images"]
    for row, prompt in zip(rows, kept):
        # the final prompt: the text, class-anchored where it does not name its class
        assert row["prompt"] == prompt["generated_as"] and row["label_name"] == prompt["label"]
        assert row["prompt"].startswith(prompt["text"])
        assert row["backend"] == "diffusers" and row["seed"].isdigit()
        assert row["model"].endswith("models/colored-digits-ldm")  # builtin-ldm, the default
        # every image checked (the verify stage), its verdict in the manifest
        assert float(row["bias_loss"]) >= 0 and row["conflicting"] in ("0", "1")
        assert row["shows_class"] in ("0", "1") and row["check_caption"]
        assert (row["proposed_reject"] == "") == (row["shows_class"] == "1"
                                                  and row["conflicting"] == "1"
                                                  and int(row["hash_distance"]) > 8)
    assert len({r["seed"] for r in rows}) == len(rows)
    checks = report["generation"]["checks"]
    assert checks["n_images"] == len(rows)
    assert checks["n_passed"] == sum(r["proposed_reject"] == "" for r in rows)


def test_same_seed_same_report(digits_run, tmp_path, builtin_cache):
    _, first = digits_run
    _, again = _run(tmp_path, builtin_cache, "again", "--dataset", "builtin:colored-digits",
                    "--conflict-ratio", "0.01")
    for report in (first, again):
        report.pop("timings_s")
    assert again == first


def test_edited_prompts_drive_generation(digits_run, tmp_path):
    """A person keeps three prompts and rewrites one; `generate` uses exactly those."""
    src, _ = digits_run
    out = tmp_path / "edited"
    shutil.copytree(src, out)
    with open(out / "prompts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["keep"] = "1" if i < 3 else "0"
    rows[0]["text"] = "a handwritten seven drawn in blue"
    rows[0]["label"] = "seven"
    with open(out / "prompts.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["generate", "--out", str(out), "--images-per-prompt", "2"]) == 0
    with open(out / "generated" / "manifest.csv", newline="") as f:
        made = list(csv.DictReader(f))
    assert len(made) == 6
    assert made[0]["prompt"] == "a handwritten seven drawn in blue"
    assert made[0]["label_name"] == "seven"
    pixels = np.asarray(Image.open(out / "generated" / made[0]["file"]).convert("RGB"), float)
    ink = pixels[pixels.sum(axis=2) > 150].mean(axis=0) / 255
    nearest = COLOR_NAMES[int(np.argmin(((np.asarray(MEAN_COLORS) - ink) ** 2).sum(axis=1)))]
    assert nearest == "blue"


def test_shape_scenes_measures_cam_mass_in_object(tmp_path, builtin_cache):
    _, report = _run(tmp_path, builtin_cache, "ss", "--dataset", "builtin:shape-scenes")
    cam = report["gradcam"]
    assert 0 <= cam["object_mass_before"] <= 1 and 0 <= cam["object_mass_after"] <= 1
    assert 0 < cam["object_area"] < 0.5


def test_detect_on_an_image_folder_without_bias(tmp_path):
    rng = np.random.default_rng(0)
    for label, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    out = tmp_path / "run"
    assert main(["detect", "--dataset", str(tmp_path / "data"), "--out", str(out),
                 "--biased-epochs", "1", "--top-k", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["detection"]["auroc"] is None
    assert report["detection"]["k_per_class"] == {"0": 3, "1": 3}
    assert report["models"]["biased"]["test"]["unbiased"] is None
    # the demo generator only renders built-ins: a clear error, exit code 2
    assert main(["caption", "--out", str(out)]) == 2  # no captions in an ImageFolder
    assert main(["report", "--out", str(out)]) == 0  # what was run so far
    page = (out / "report.html").read_text()
    assert "2 classes (cat, dog)" in page and page.count("<p>Not run.</p>") == 3  # 3, 4, 6


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["caption", "--out", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["detect", "--dataset", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "r")]) == 2
    assert "is not a folder, a .zip file" in capsys.readouterr().err
    assert main(["run", "--dataset", "builtin:colored-digits", "--conflict-ratio", "0.03",
                 "--cache-dir", str(tmp_path), "--out", str(tmp_path / "r2")]) == 2
    assert "0.005" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "detect", "caption", "filter", "generate",
                                     "debias", "rescore", "gradcam", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_debias_trains_the_chosen_baselines_next_to_diffubias(digits_run, tmp_path):
    """`debias --baselines` adds each baseline's model and metrics; dropping them removes them."""
    src, _ = digits_run
    out = tmp_path / "with_baselines"
    shutil.copytree(src, out)
    assert main(["debias", "--out", str(out), "--baselines", "oversample-topk,jtt"]) == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("oversample-topk", "jtt"):
        entry = report["models"][name]
        assert set(entry["test"]) >= {"overall", "aligned", "conflicting", "unbiased"}
        assert (out / f"{name}.safetensors").exists()
    # oversampling repeats this run's top-K candidates (scores.csv), 3 captions x 1 image each
    oversampled = report["models"]["oversample-topk"]
    assert oversampled["info"]["candidates"] == "given"
    n_candidates = report["detection"]["n_selected"]
    assert oversampled["n_train"] == report["models"]["vanilla"]["n_train"] + 3 * n_candidates
    assert report["config"]["baselines"] == ["oversample-topk", "jtt"]
    assert main(["debias", "--out", str(out), "--baselines", ""]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "jtt" not in report["models"] and "vanilla" in report["models"]


def test_baseline_names_match_the_library(capsys):
    from diffubias.baselines import METHODS
    from diffubias.config import BASELINES

    assert set(BASELINES) <= set(METHODS) and "diffubias" not in BASELINES
    assert main(["run", "--out", "nowhere", "--baselines", "lff,magic"]) == 2
    assert "unknown baselines ['magic']" in capsys.readouterr().err


def test_run_csvs_guard_formulas_and_read_them_back_exactly(tmp_path):
    from diffubias.run_folder import read_csv as _read_csv, write_csv as _write_csv

    texts = ["=HYPERLINK(\"http://x\")", "+1 blue seven", "@cmd", "a plain caption", "'=kept"]
    _write_csv(tmp_path / "p.csv", ("n", "text"), ([i, t] for i, t in enumerate(texts)))
    with open(tmp_path / "p.csv", newline="") as f:
        cells = [row[1] for row in list(csv.reader(f))[1:]]
    # what a spreadsheet sees: no cell starts with a formula character
    assert cells[:3] == ["'=HYPERLINK(\"http://x\")", "'+1 blue seven", "'@cmd"]
    assert [row["text"] for row in _read_csv(tmp_path / "p.csv")] == texts
