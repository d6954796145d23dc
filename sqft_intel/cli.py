"""`sqft`: parse arguments, build the recipe, call the stage. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import SqftError

_RECIPE_HELP = "YAML recipe merged over the defaults (see `sqft recipe`)"


def _common(p: argparse.ArgumentParser, *, out_required: bool) -> None:
    p.add_argument("--recipe", type=Path, help=_RECIPE_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe value, e.g. --set finetune.steps=50 (repeatable)")
    p.add_argument("--out", type=Path, required=out_required, default=None,
                   help="run directory, one sub-directory per stage"
                   + ("" if out_required else " (default: runs/<model>-<task>)"))
    p.add_argument("--quick", action="store_true",
                   help="short schedule (about 3 minutes on 2 cores): fewer steps and eval items")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores this process may use)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _verbosity(p)


def _verbosity(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages in the log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqft",
        description="SQFT on Intel hardware: sparsify -> INT4 quantize -> NLS fine-tune -> select -> "
        "exact merge -> OpenVINO export -> verify, generate, serve.",
        epilog="Example: sqft run --quick   (bundled SmolLM2-135M on ARC-Easy)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run every stage and evaluate (default: bundled model)",
        description="Validate the recipe, then sparsify -> quantize -> finetune -> select -> merge -> "
        "eval -> export -> verify -> generate (quantize only for INT4 modes, export unless "
        "`export.enabled: false`). Stages whose inputs did not change are reused; an interrupted "
        "fine-tuning resumes.")
    _common(run, out_required=False)
    for stage, text in [
        ("sparsify", "Wanda-prune the model into OUT/sparsify"),
        ("quantize", "INT4 (rtn or mask-aware gptq) of OUT/sparsify into OUT/quantize, zeros kept"),
        ("finetune", "train NLS adapters on OUT/sparsify (or OUT/quantize) into OUT/finetune "
                     "(resumes; DDP under torchrun)"),
        ("select", "pick a sub-adapter of OUT/finetune into OUT/select"),
        ("merge", "fold the selected sub-adapter into the sparse (INT4) weights: OUT/merge"),
        ("export", "OpenVINO IR of OUT/merge (exact INT4, FP16 or sparse INT8) into OUT/openvino"),
        ("eval", "accuracy of dense, sparse and merged models; writes OUT/summary.json "
                 "(--harness lm-eval: OUT/lm_eval.json)"),
    ]:
        p = sub.add_parser(stage, help=text, description=text)
        _common(p, out_required=True)
        if stage == "eval":
            p.add_argument("--harness", choices=["builtin", "lm-eval"], default=None,
                           help="builtin scorer (default) or lm-evaluation-harness on the merged "
                           "model, base + unmerged adapters and the OpenVINO export")
            p.add_argument("--tasks", default=None, metavar="T1,T2",
                           help="lm-eval tasks (default: data.task); bundled names run offline")
    verify = sub.add_parser(
        "verify", help="check an export against its merge stage (sparsity, INT4 bits, logits)",
        description="Re-read DIR/openvino and compare it with DIR/merge: zeros where the masks say "
        "pruned, INT4 integers/scales/zero points bit for bit, OpenVINO vs torch logits and greedy "
        "tokens. Prints a table; exits 1 on any mismatch.")
    verify.add_argument("dir", type=Path, help="run directory (holding openvino/ and merge/) or an "
                        "export directory")
    verify.add_argument("--merge", type=Path, default=None, help="merge stage (default: DIR/merge)")
    _verbosity(verify)
    for name, text in [("generate", "generate text from an export with OpenVINO GenAI (streams)"),
                       ("chat", "chat with an export in the terminal (OpenVINO GenAI, streams)")]:
        g = sub.add_parser(name, help=text, description=text)
        g.add_argument("dir", type=Path, help="export directory, or a run directory holding openvino/")
        if name == "generate":
            g.add_argument("prompt", help="the prompt text")
        g.add_argument("--max-new-tokens", type=int, default=128)
        g.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, ... (default CPU)")
    rep = sub.add_parser(
        "report", help="write DIR/report/index.html: plots and tables of a run",
        description="One self-contained HTML page (PNGs beside it) about a run directory: accuracy "
        "of every variant, per-layer sparsity before/after the merge, the training loss, NLS rank "
        "sampling, the sub-adapter search's Pareto front, lm-eval and export verification results. "
        "`sqft run` writes it at the end.")
    rep.add_argument("dir", type=Path, help="run directory (the --out of sqft run)")
    rep.add_argument("--out", type=Path, default=None, help="folder for the page (default DIR/report)")
    show = sub.add_parser("recipe", help="print the default recipe (or the merged one) as YAML")
    show.add_argument("--recipe", type=Path, help=_RECIPE_HELP)
    show.add_argument("--quick", action="store_true", help="show the --quick schedule")
    return parser


def _recipe(args):
    from .recipe import QUICK_OVERRIDES, build_recipe, load_recipe_file, parse_set

    layers = []
    if args.quick:
        layers.append(("--quick", QUICK_OVERRIDES))
    if args.recipe is not None:
        layers.append((f"recipe file {args.recipe}", load_recipe_file(args.recipe)))
    if getattr(args, "overrides", None):
        layers.append(("--set", parse_set(args.overrides)))
    flags = {k: v for k, v in (("harness", getattr(args, "harness", None)),
                               ("tasks", getattr(args, "tasks", None))) if v is not None}
    if flags:
        if "tasks" in flags:
            flags["tasks"] = [t.strip() for t in flags["tasks"].split(",") if t.strip()]
        layers.append(("--harness/--tasks", {"eval": flags}))
    return build_recipe(*layers)


def _default_out(recipe) -> Path:
    name = Path(recipe.model.name_or_path.rstrip("/")).name
    return Path("runs") / f"{name}-{recipe.data.task}"


def _run_export_tool(args) -> int:
    from .export import api
    from .run_dir import export_dir_of, merge_dir_of_export

    export = export_dir_of(args.dir)
    if args.command == "verify":
        merge = args.merge or merge_dir_of_export(export)
        from .export.verify import verify_export

        report = verify_export(export, merge)
        print(report.table())
        return 0 if report.ok else 1
    stream = lambda piece: print(piece, end="", flush=True)  # noqa: E731
    if args.command == "generate":
        api.generate(export, args.prompt, max_new_tokens=args.max_new_tokens, device=args.device,
                     stream=stream)
        print()
        return 0
    api.chat(export, max_new_tokens=args.max_new_tokens, device=args.device, stream=stream)
    return 0


def configure_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """The `sqft_intel` logger prints `[sqft] message` lines on stdout (progress bars: stderr)."""
    logger = logging.getLogger("sqft_intel")
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_sqft", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[sqft] %(message)s"))
        handler._sqft = True
        logger.addHandler(handler)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
    try:
        if args.command in ("verify", "generate", "chat"):
            return _run_export_tool(args)
        if args.command == "report":
            from .report import write_report

            print(write_report(args.dir, args.out))
            return 0
        recipe = _recipe(args)
        if args.command == "recipe":
            from .recipe import recipe_yaml

            print(recipe_yaml(recipe.raw), end="")
            return 0
        from . import pipeline
        from .device import set_threads

        set_threads(args.threads)
        out = args.out or _default_out(recipe)
        progress = not args.no_progress
        if args.command == "run":
            pipeline.run_pipeline(recipe, out, progress=progress)
        elif args.command == "eval":
            pipeline.validate(recipe, running=(), out=out)
            pipeline.run_eval(recipe, out)
        else:
            pipeline.validate(recipe, running=(args.command,), out=out)
            pipeline.run_stage(recipe, out, args.command, progress=progress)
    except SqftError as e:
        print(f"sqft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sqft: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
