import json

import pytest

from sqft_intel import ArtifactError, load_stage
from sqft_intel.artifacts import atomic_dir, write_stage_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "stage"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert (final / "a.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temp leftovers


def test_load_stage_checks_stage_and_version(tmp_path):
    write_stage_json(tmp_path, stage="sparsify", config={"sparsity": 0.5})
    assert load_stage(tmp_path, expect="sparsify").config == {"sparsity": 0.5}
    with pytest.raises(ArtifactError, match="expected 'merge'"):
        load_stage(tmp_path, expect="merge")
    with pytest.raises(ArtifactError, match="missing"):
        load_stage(tmp_path, require=("masks.safetensors",))
    rec = json.loads((tmp_path / "stage.json").read_text())
    rec["sqft_intel_version"] = "9.9.0"
    (tmp_path / "stage.json").write_text(json.dumps(rec))
    with pytest.raises(ArtifactError, match="written by sqft_intel '9.9.0'"):
        load_stage(tmp_path)


def test_load_stage_on_a_plain_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a stage directory"):
        load_stage(tmp_path)


def test_stage_json_records_and_checks_tensor_checksums(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.arange(6.0)}, tmp_path / "model.safetensors")
    write_stage_json(tmp_path, stage="merge", config={})
    rec = load_stage(tmp_path, expect="merge")
    assert list(rec.raw["sha256"]) == ["model.safetensors"]
    assert len(rec.raw["sha256"]["model.safetensors"]) == 64
    save_file({"w": torch.arange(6.0) + 1}, tmp_path / "model.safetensors")  # same shape, new values
    with pytest.raises(ArtifactError, match=r"\['model.safetensors'\] changed since the stage wrote"):
        load_stage(tmp_path)
    assert load_stage(tmp_path, verify=False).stage == "merge"  # explicit opt-out only
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="incomplete: missing"):
        load_stage(tmp_path, verify=False)
