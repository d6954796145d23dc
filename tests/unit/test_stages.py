"""The stage chain's table (parents, folders, recipe sections) and the rule that only
`sqft_intel/run_dir.py` knows which folder a stage lives in."""

import ast
import shutil
from pathlib import Path

import pytest

from sqft_intel import stages
from sqft_intel.recipe import SECTIONS, build_recipe
from sqft_intel.run_dir import STAGE_DIRS, RunDir

REPO = Path(__file__).resolve().parents[2]


def test_stage_table_agrees_with_run_dir_and_recipe(tmp_path):
    names = [s.name for s in stages.STAGES]
    assert len(set(names)) == len(names)
    dirs = [s.directory for s in stages.STAGES]
    assert len(set(dirs)) == len(dirs)
    for i, s in enumerate(stages.STAGES):
        assert s.directory == RunDir(tmp_path).stage(s.name).name, s.name
        assert s.parent is None or s.parent in names[:i], (s.name, s.parent)  # an earlier stage
        assert s.sections and set(s.sections) <= set(SECTIONS), (s.name, s.sections)
        assert stages.BY_NAME[s.name] is s
    assert set(STAGE_DIRS) == set(names)

    def chain(recipe):
        return [s.name for s in stages.chain(recipe)]

    def parents(recipe):
        found = {n: stages.parent_of(recipe, n) for n in chain(recipe)}
        assert all(p is None or p in chain(recipe) for p in found.values())  # never a skipped one
        return found

    default = build_recipe()  # qa-sparsepeft: trains on the INT4 base
    assert default.finetune.adapters.mode == "qa-sparsepeft"
    assert chain(default) == ["sparsify", "quantize", "finetune", "select", "merge", "export"]
    assert parents(default) == {"sparsify": None, "quantize": "sparsify", "finetune": "quantize",
                                "select": "finetune", "merge": "select", "export": "merge"}

    fp = build_recipe({"finetune": {"mode": "sparsepeft"}})  # no quantize stage
    assert chain(fp) == ["sparsify", "finetune", "select", "merge", "export"]
    assert parents(fp)["finetune"] == "sparsify"
    assert stages.parent_of(fp, "select") == "finetune"

    no_export = build_recipe({"export": {"enabled": False}})
    assert chain(no_export) == ["sparsify", "quantize", "finetune", "select", "merge"]
    assert parents(no_export)["finetune"] == "quantize"
    fp_no_export = build_recipe({"finetune": {"mode": "sparsepeft"}, "export": {"enabled": False}})
    assert chain(fp_no_export) == ["sparsify", "finetune", "select", "merge"]


# ---------------------------------------------------------------- stage folders as literals

FOLDERS = frozenset(STAGE_DIRS.values())  # sparsify quantize finetune select merge openvino
PATH_CALLS = {"Path", "PurePath", "PosixPath", "join", "joinpath", "with_name"}  # Path(x, "merge")


def _is_folder(node: ast.AST) -> bool:
    """A string constant naming a stage folder, alone or as the first part of a path."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.split("/")[0] in FOLDERS)


def _fstring_joins_folder(node: ast.JoinedStr) -> bool:
    """f"{out}/merge" or f"{out}/openvino/model.xml"."""
    parts = node.values
    return any(isinstance(a, ast.FormattedValue) and isinstance(b, ast.Constant)
               and isinstance(b.value, str) and b.value.startswith("/")
               and b.value[1:].split("/")[0] in FOLDERS for a, b in zip(parts, parts[1:], strict=False))


def stage_folder_literals(source: str) -> list[int]:
    """Lines where a stage folder is spelled as a path: `x / "merge"`, `"openvino" / x`,
    `Path(x, "merge")`, `os.path.join(x, "openvino")`, `p.joinpath("select")`, f"{x}/merge"."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if _is_folder(node.left) or _is_folder(node.right):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in PATH_CALLS and any(_is_folder(a) for a in node.args):
                lines.append(node.lineno)
        elif isinstance(node, ast.JoinedStr) and _fstring_joins_folder(node):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_detector_finds_a_stage_folder_path():
    bad = ('from pathlib import Path\nimport os\nout = Path("x")\nm = out / "merge"\n'
           'e = out / "openvino/model.xml"\nj = os.path.join(out, "sparsify")\n'
           'p = out.joinpath("finetune")\nq = Path(out, "select")\nr = Path(f"{out}/quantize")\n'
           'o = Path("openvino")\n')
    assert stage_folder_literals(bad) == [4, 5, 6, 7, 8, 9, 10]
    # stage names used as names, not paths, are fine: stage.json's `stage`, a variant label, text
    ok = ('load_stage(p, expect="merge")\nrun.stage("merge")\nvariants["openvino"] = 1\n'
          'x = "openvino"\nprint("OUT/merge")\nout / f"{name}.json"\nf"{a}/merged {b}"\n')
    assert stage_folder_literals(ok) == []


def folder_literals_under(root: Path) -> dict[str, list[int]]:
    """{file: lines} over root/sqft_intel and root/deploy, run_dir.py excepted."""
    files = [f for d in ("sqft_intel", "deploy") for f in sorted((root / d).rglob("*.py"))]
    assert len(files) > 20 and root / "deploy" / "server.py" in files
    found = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        if rel != "sqft_intel/run_dir.py" and (lines := stage_folder_literals(f.read_text())):
            found[rel] = lines
    return found


def test_only_run_dir_spells_stage_folders():
    """Every other module asks `RunDir` (or `run_dir.STAGE_DIRS`) where a stage lives."""
    found = folder_literals_under(REPO)
    assert not found, f"stage folders spelled as paths outside sqft_intel/run_dir.py: {found}"


@pytest.mark.parametrize("line", ['out = run / "merge"\n', 'p = Path(root, "openvino")\n'])
def test_a_package_file_with_a_folder_literal_is_found(tmp_path, line):
    """The check above fails once someone writes `out / "merge"` in a package file (shown on a
    copy of the package, with the files it flags today made clean)."""
    for d in ("sqft_intel", "deploy"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in folder_literals_under(tmp_path):  # today's offenders, if any: not what we test
        (tmp_path / rel).write_text("")
    assert folder_literals_under(tmp_path) == {}
    victim = tmp_path / "sqft_intel" / "pipeline.py"
    victim.write_text(victim.read_text() + line)
    n = len(victim.read_text().splitlines())
    assert folder_literals_under(tmp_path) == {"sqft_intel/pipeline.py": [n]}
