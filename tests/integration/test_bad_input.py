"""Bad input fails before any heavy work: typed error naming the value and the fix, exit 2,
nothing written.

The cases run `sqft` in this process (`sqft_main`: no subprocess importing torch each time); a
few go through a real `python -m sqft_intel.cli` process so the entry point stays covered.
"""

import re

import pytest
import yaml

from sqft_intel.errors import ArtifactError
from sqft_intel.run_dir import RunDir
from tests.conftest import copy_run, run_cli, write_jsonl

CASES = [
    ("missing model path", {"model": {"name_or_path": "./no/such/model"}},
     r"`model.name_or_path`='./no/such/model' does not exist"),
    ("sparsity >= 1", {"sparsify": {"sparsity": 1.0}}, r"`sparsify.sparsity`=1.0 is outside \[0, 1\)"),
    ("sparsity < 0", {"sparsify": {"sparsity": -0.2}}, r"outside \[0, 1\)"),
    ("n >= m", {"sparsify": {"nm": [4, 4]}}, r"n must be smaller than m"),
    ("empty rank space", {"finetune": {"rank_space": []}}, r"`finetune.rank_space`=\[\] must hold"),
    ("targets match nothing", {"finetune": {"target_modules": ["c_attn"], "elastic_modules": ["c_attn"]}},
     r"`finetune.target_modules`=\['c_attn'\] matched no Linear.*available suffixes"),
    ("sparsify targets match nothing", {"sparsify": {"target_modules": ["fc1"]}},
     r"`sparsify.target_modules`=\['fc1'\] matched no Linear"),
    ("unknown recipe key", {"finetune": {"stpes": 3}}, r"unknown key `finetune.stpes`.*`steps`"),
    ("unknown section", {"sparsity": {"sparsity": 0.5}}, r"unknown section `sparsity`.*`sparsify`"),
    ("unknown task", {"data": {"task": "arc_esay", "train_file": None, "eval_file": None}},
     r"`data.task`='arc_esay'.*Did you mean 'arc_easy'"),
    ("N:M not dividing", {"sparsify": {"nm": [2, 5]}}, r"m=5 does not divide in_features=64"),
    ("sparsepeft on unpruned layer", {"sparsify": {"target_modules": ["q_proj"]}},
     r"sparsify does not prune"),
    # wrong types, named before anything loads
    ("sparsity not a number", {"sparsify": {"sparsity": "half"}},
     r"`sparsify.sparsity`='half' has the wrong type; expected float"),
    ("steps not an int", {"finetune": {"steps": 1.5}},
     r"`finetune.steps`=1.5 has the wrong type; expected int"),
    ("rank space a string", {"finetune": {"rank_space": "32"}}, r"expected list\[int, \.\.\.\]"),
    ("nm as text", {"sparsify": {"nm": "2:4"}}, r"`sparsify.nm`='2:4' has the wrong type"),
    ("model path a number", {"model": {"name_or_path": 7}}, r"`model.name_or_path`=7 has the wrong type"),
    # ranges and combinations
    ("lr out of range", {"finetune": {"lr": 2.0}}, r"`finetune.lr`=2.0 must be null or in \(0, 1\)"),
    ("batch size 0", {"finetune": {"batch_size": 0}}, r"`finetune.batch_size` must be a positive int"),
    ("elastic not a target", {"finetune": {"elastic_modules": ["o_proj"]}}, r"not in target_modules"),
    ("custom select without ranks", {"select": {"strategy": "custom"}}, r"`select.ranks` is required"),
    ("eval items 0", {"eval": {"items": 0}}, r"`eval.items`=0 must be null or a positive int"),
    # INT4 (the quantize stage and the QA modes)
    ("bits not 4", {"quantize": {"bits": 8}}, r"`quantize.bits`=8; only 4-bit weights"),
    ("unknown quantize method", {"quantize": {"method": "awq"}},
     r"`quantize.method`='awq'; use one of \['rtn', 'gptq'\]"),
    ("group size not dividing", {"finetune": {"mode": "qa-sparsepeft"}, "quantize": {"group_size": 48}},
     r"`quantize.group_size`=48 does not divide in_features=64 of `model.layers.0"),
    ("qa with dropout", {"finetune": {"mode": "qa-sparsepeft", "dropout": 0.1}}, r"no separate adapter path"),
    ("qa with a plain merge", {"finetune": {"mode": "qa-sparsepeft"}, "merge": {"method": "lora"}},
     r"the INT4 merge is always masked"),
    ("sqft mode through run", {"finetune": {"mode": "sqft"}}, r"keeps its adapters unmerged"),
    # export
    ("unknown export format", {"export": {"format": "int3"}}, r"`export.format`='int3'; use one of"),
    ("int4 export of an FP merge", {"export": {"enabled": True, "format": "int4"}}, r"needs an INT4 merge"),
]


def bad_recipe(tmp_path, tiny_recipe, override):
    base = yaml.safe_load(tiny_recipe.read_text())
    for section, values in override.items():
        base.setdefault(section, {}).update(values)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(base))
    return recipe


@pytest.mark.parametrize("name, override, match", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_fails_early_and_writes_nothing(tmp_path, tiny_recipe, sqft_main, name, override,
                                                   match):
    out = tmp_path / "out"
    code, _, err = sqft_main("run", "--recipe", bad_recipe(tmp_path, tiny_recipe, override),
                             "--out", out)
    assert code == 2, err[-2000:]
    assert err.startswith("sqft: error:")
    assert re.search(match, err), err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("case", [CASES[0], CASES[-1]], ids=[CASES[0][0], CASES[-1][0]])
def test_bad_recipe_through_the_console_entry_point(tmp_path, tiny_recipe, case):
    """The same refusal from a real `sqft` process: exit status 2, one line, no traceback."""
    _, override, match = case
    out = tmp_path / "out"
    proc = run_cli("run", "--recipe", str(bad_recipe(tmp_path, tiny_recipe, override)),
                   "--out", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("sqft: error:")
    assert re.search(match, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_empty_dataset(tmp_path, tiny_recipe, sqft_main):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    code, _, err = sqft_main("run", "--recipe", tiny_recipe, "--set", f"data.train_file={empty}",
                             "--out", tmp_path / "out")
    assert code == 2
    assert f"data file `{empty}` holds no rows" in err
    assert not (tmp_path / "out").exists()


def test_malformed_row_names_the_line(tmp_path, tiny_recipe, sqft_main):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q"}\n')
    code, _, err = sqft_main("run", "--recipe", tiny_recipe, "--set", f"data.train_file={bad}",
                             "--out", tmp_path / "out")
    assert code == 2 and "line 2" in err and "`choices`" in err


def test_output_under_a_file_is_refused(tmp_path, tiny_recipe, sqft_main):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = sqft_main("run", "--recipe", tiny_recipe, "--out", blocker / "run")
    assert code == 2 and f"`{blocker}` is a file" in err
    assert blocker.read_text() == "not a directory"


def test_missing_recipe_file(tmp_path):
    proc = run_cli("run", "--recipe", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_failed_rerun_keeps_the_good_stage(tmp_path, tiny_recipe, sqft_main, monkeypatch):
    """A stage refused up front, or failing midway, leaves the previous good stage untouched."""
    import sqft_intel.stages.sparsify as stage

    out = tmp_path / "out"
    assert sqft_main("sparsify", "--recipe", tiny_recipe, "--out", out)[0] == 0
    before = (out / "sparsify" / "stage.json").read_text()
    # too little calibration text for the request: refused by validation, before any model loads
    code, _, err = sqft_main("sparsify", "--recipe", tiny_recipe, "--out", out,
                             "--set", "sparsify.calib_samples=100000")
    assert code == 2 and "calib_samples" in err
    assert (out / "sparsify" / "stage.json").read_text() == before

    def fails_midway(*args, **kwargs):
        raise ArtifactError("Wanda failed on layer 3")

    monkeypatch.setattr(stage, "sparsify_", fails_midway)  # the stage is running: model loaded
    code, _, err = sqft_main("sparsify", "--recipe", tiny_recipe, "--out", out,
                             "--set", "sparsify.sparsity=0.6")
    assert code == 2 and "Wanda failed on layer 3" in err
    assert (out / "sparsify" / "stage.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["sparsify"]


def test_adapters_from_another_sparse_base_are_refused(tmp_path, tiny_recipe, tiny_fp_run,
                                                       sqft_main):
    """Re-sparsifying under trained adapters, then selecting: refused (masks sha256 differ)."""
    out = copy_run(tiny_fp_run[0], tmp_path / "out", stages=("sparsify", "finetune"))
    assert sqft_main("sparsify", "--recipe", tiny_recipe, "--out", out,
                     "--set", "sparsify.sparsity=0.6")[0] == 0
    code, _, err = sqft_main("select", "--recipe", tiny_recipe, "--out", out,
                             "--set", "sparsify.sparsity=0.6")
    assert code == 2 and "trained on another sparse base" in err
    assert not (out / "select").exists()


def test_qa_without_a_quantize_stage(tmp_path, tiny_recipe, tiny_fp_run, sqft_main):
    out = copy_run(tiny_fp_run[0], tmp_path / "out", stages=("sparsify",))
    code, _, err = sqft_main("finetune", "--recipe", tiny_recipe, "--out", out,
                             "--set", "finetune.mode=qa-sparsepeft", "--set", "quantize.group_size=32")
    assert code == 2
    assert f"`{RunDir(out).quantize}` is not a stage directory" in err and "run the stage" in err
    assert not (out / "finetune").exists()


def test_quantize_stage_with_masks_of_another_model(tmp_path, tiny_recipe, tiny_fp_run, sqft_main):
    """Masks swapped for another sparsity's (checksums re-recorded, so only the content differs)."""
    import json

    from sqft_intel.artifacts import sha256_file

    common = ["--recipe", tiny_recipe, "--set", "quantize.group_size=32"]
    a, b = copy_run(tiny_fp_run[0], tmp_path / "a", stages=("sparsify",)), tmp_path / "b"
    assert sqft_main("sparsify", *common, "--out", b, "--set", "sparsify.sparsity=0.7")[0] == 0
    assert sqft_main("quantize", *common, "--out", a)[0] == 0
    (b / "sparsify" / "masks.safetensors").replace(a / "quantize" / "masks.safetensors")
    rec = json.loads((a / "quantize" / "stage.json").read_text())
    rec["sha256"]["masks.safetensors"] = sha256_file(a / "quantize" / "masks.safetensors")
    (a / "quantize" / "stage.json").write_text(json.dumps(rec))
    code, _, err = sqft_main("finetune", *common, "--out", a, "--set", "finetune.mode=qa-sparsepeft")
    assert code == 2 and "is nonzero where its mask says pruned" in err
    assert not (a / "finetune").exists()
