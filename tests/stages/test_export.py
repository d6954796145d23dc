"""Stage `export`: the merged model as OpenVINO IR in `RunDir(out).export`, which no other stage
writes; its stage.json names its parent `merge` and the format it resolved."""

import pytest
import torch

import sqft_intel as sq
from sqft_intel import stages
from sqft_intel.export.config import MODEL_XML
from sqft_intel.pipeline import fingerprint
from sqft_intel.run_dir import RunDir
from tests.conftest import copy_run
from tests.stages.conftest import QA, recipe_of, run_stages, snapshot

pytest.importorskip("openvino")  # the `openvino` extra: installed by the README's set-up


def test_export_is_the_only_stage_writing_the_export_folder(tmp_path, stage_recipe):
    recipe = recipe_of(stage_recipe, {"export": {"enabled": True}})
    out = tmp_path / "run"
    run = RunDir(out)
    chain = [s.name for s in stages.chain(recipe)]
    assert chain[-1] == "export"
    for name in chain[:-1]:
        run_stages(recipe, out, name)
        assert not run.export.exists(), name
    written = {name: snapshot(run.stage(name)) for name in chain[:-1]}
    listing = {p.name for p in out.iterdir()}
    run_stages(recipe, out, "export")
    assert {p.name for p in out.iterdir()} == listing | {run.export.name}
    assert {name: snapshot(run.stage(name)) for name in chain[:-1]} == written

    rec = sq.load_stage(run.export, expect="export", require=(MODEL_XML,))
    assert rec.parent == "merge" and rec.config["format"] == "fp16"  # `auto` for an FP merge
    assert rec.raw["fingerprint"] == fingerprint(recipe, "export", run)
    merge_masks, export_masks = sq.load_masks(run.merge), sq.load_masks(run.export)
    assert export_masks.keys() == merge_masks.keys()
    assert all(torch.equal(export_masks[n], k) for n, k in merge_masks.items())
    before = snapshot(run.export)
    run_stages(recipe, out, "export")  # unchanged: reused
    assert snapshot(run.export) == before
    other = recipe_of(stage_recipe, {"export": {"enabled": True, "format": "sparse-int8"}})
    assert fingerprint(other, "export", run) != rec.raw["fingerprint"]  # its section: recomputed


def test_int4_export_of_the_cli_run(tmp_path, tiny_int4_run, stage_recipe):
    """The session's INT4 run (`sqft run`): exact INT4 IR, reused by a rerun of the stage."""
    run = RunDir(copy_run(tiny_int4_run[0], tmp_path / "run"))
    rec = sq.load_stage(run.export, expect="export", require=(MODEL_XML,))
    assert rec.parent == "merge" and rec.config["format"] == "int4"
    before = snapshot(run.export)
    run_stages(recipe_of(stage_recipe, {**QA, "export": {"enabled": True}}), run.root, "export")
    assert snapshot(run.export) == before
