"""diffubias.files: a failed write leaves the old file and no temp file behind."""

import pytest

from diffubias.files import atomic_path, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as temp:
        temp.write_text("half of the new")
        raise OSError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_the_temp_file_is_hidden_next_to_the_target_and_replaces_it(tmp_path):
    target = tmp_path / "sub" / "prompts.csv"
    with atomic_path(target) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".prompts.csv.")
        temp.write_text("new")
    assert target.read_text() == "new" and len(list(target.parent.iterdir())) == 1
