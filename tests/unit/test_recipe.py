import pytest

from sqft_intel import ConfigError
from sqft_intel.recipe import DEFAULT_RECIPE, QUICK_OVERRIDES, build_recipe, merge_recipe, parse_set


def test_partial_recipe_merges_over_defaults():
    r = build_recipe({"sparsify": {"sparsity": 0.6}})
    assert r.sparsify.sparsity == 0.6
    assert r.finetune.adapters.rank_space == (32, 24, 16)
    assert r.model.name_or_path == "smollm2-135m" and r.data.task == "arc_easy"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key `sparsify.sparsty`.*Did you mean `sparsity`"):
        build_recipe({"sparsify": {"sparsty": 0.5}})


def test_unknown_section_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown section `finetun`.*Did you mean `finetune`"):
        build_recipe({"finetun": {"steps": 3}})


def test_finetune_section_feeds_adapter_and_train_configs():
    r = build_recipe({"finetune": {"rank_space": [8, 4], "steps": 7, "mode": "lora"}})
    adapters, train = r.finetune.adapters, r.finetune.train
    assert adapters.rank_space == (8, 4) and adapters.mode == "lora" and train.steps == 7


def test_quick_overrides_are_valid_keys():
    merge_recipe(DEFAULT_RECIPE, QUICK_OVERRIDES)


def test_parse_set_reads_yaml_scalars():
    assert parse_set(["finetune.steps=10", "sparsify.nm=[2, 4]"]) == {
        "finetune": {"steps": 10}, "sparsify": {"nm": [2, 4]}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["steps=10"])


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_recipe({"sparsify": 0.5})


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    """Regression: YAML 1.1 read `lr: 3e-4` as the string '3e-4' and the recipe was rejected."""
    from sqft_intel.recipe import load_recipe_file

    assert parse_set(["finetune.lr=2e-3"]) == {"finetune": {"lr": 0.002}}
    f = tmp_path / "r.yaml"
    f.write_text("finetune:\n  lr: 3e-4\n  steps: 10\n")
    r = build_recipe(load_recipe_file(f))
    assert r.finetune.train.lr == 3e-4 and r.finetune.train.steps == 10


def test_default_chain_is_int4_qa_sparsepeft():
    """The default recipe: 50 % Wanda -> GPTQ asym g64 -> QA-SparsePEFT -> heuristic -> INT4 merge
    -> exact INT4 OpenVINO export."""
    from sqft_intel.stages import chain

    r = build_recipe()
    names = tuple(s.name for s in chain(r))
    assert names == ("sparsify", "quantize", "finetune", "select", "merge", "export")
    assert r.export.format == "auto" and r.export.other_layers == "int8"
    assert (r.sparsify.target_sparsity, r.quantize.method, r.quantize.group_size, r.quantize.sym) == (
        0.5, "gptq", 64, False)
    assert r.finetune.adapters.mode == "qa-sparsepeft" and r.select.strategy == "heuristic"
    assert r.finetune.train.lr == 2e-3 and r.raw["finetune"]["lr"] is None  # the mode's default lr


def test_lr_default_follows_the_mode_unless_given():
    assert build_recipe({"finetune": {"mode": "sparsepeft"}}).finetune.train.lr == 3e-4
    assert build_recipe({"finetune": {"mode": "sparsepeft", "lr": 1e-3}}).finetune.train.lr == 1e-3


@pytest.mark.parametrize("partial, words", [
    ({"sparsify": {"sparsity": []}}, "`sparsify.sparsity`=[] has the wrong type; expected float"),
    ({"finetune": {"rank_space": "abc"}}, "expected list[int, ...]"),
    ({"quantize": {"group_size": "x"}}, "`quantize.group_size`='x'"),
    ({"select": {"strategy": "custom", "ranks": [1]}}, "`select.ranks`=[1]"),
    ({"eval": {"batch_size": "x"}}, "`eval.batch_size`='x'"),
    ({"finetune": {"target_modules": 5}}, "`finetune.target_modules`=5"),
    ({"sparsify": {"nm": "x"}}, "expected list[int, int] | null"),
    ({"finetune": {"steps": 1.5}}, "expected int"),
    ({"export": {"logit_tol": "x"}}, "`export.logit_tol`='x'"),
    ({"data": {"task": 5}}, "`data.task`=5"),
])
def test_wrong_types_are_named_before_any_work(partial, words):
    """Regression: these were accepted (or crashed later, deep in a stage) before type checks."""
    with pytest.raises(ConfigError) as e:
        build_recipe(partial)
    assert words in str(e.value)
