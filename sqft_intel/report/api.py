"""Assemble the report: figures from `plots`, tables from the run's summaries, one HTML page.

The page embeds its PNGs as data URIs, so the single file can be mailed or attached to an issue;
the PNGs are also written beside it for slides. A small script records on the page how many of
its images decoded, which the rendering test reads back from headless Chromium.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from ..artifacts import write_text_atomic
from ..errors import ArtifactError
from ..run_dir import RunDir
from .collect import collect

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;border-bottom:1px solid #eee}
th{text-align:left;background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}.ok{color:#080}
.bad{color:#b00;font-weight:bold}code{background:#f3f3f3;padding:0 .2em}
"""
_SCRIPT = """
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesTotal = imgs.length;
});
"""


def _pct(x) -> str:
    return "" if x is None else f"{x:.1%}"


def _table(head: list[str], rows: list[list], numeric_from: int = 1) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for r in rows:
        cells = "".join(f'<td class="n">{html.escape(str(c))}</td>' if i >= numeric_from else
                        f"<td>{html.escape(str(c))}</td>" for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _sections(d: dict, folder: Path) -> list[str]:
    from . import plots  # matplotlib: imported only when a report is drawn
    out = []
    s = d["summary"]
    if s and s.get("generative"):
        cols = [(t, m) for t, ms in s["metrics"].items() for m in ms]
        out.append(f"<h2>Accuracy by generation ({html.escape(s['task'])}, {s['eval_items']} "
                   "items, greedy)</h2>")
        out.append(_table(["variant", "sparsity", *(f"{t} {m}" for t, m in cols), "mean", "run by"],
                          [[r["variant"], _pct(r.get("sparsity")),
                            *(_pct(r["scores"][t][m]) for t, m in cols), _pct(r["acc"]),
                            r.get("backend", "")] for r in s["rows"]]))
        out.append(f'<p class="note">Every generation, its extracted answer and the gold: '
                   f'{html.escape(", ".join(r["records"] for r in s["rows"]))}.</p>')
        out.append(_img(plots.accuracy_bars(s["rows"], folder / "accuracy.png"), "accuracy"))
    elif s:
        out.append(f"<h2>Accuracy ({html.escape(s['task'])}, {s['eval_items']} validation items)</h2>")
        out.append(_table(["variant", "sparsity", "acc", "acc_norm", "scored in"],
                          [[r["variant"], _pct(r["sparsity"]), _pct(r["acc"]), _pct(r["acc_norm"]),
                            r.get("precision", "")] for r in s["rows"]]))
        out.append(_img(plots.accuracy_bars(s["rows"], folder / "accuracy.png"), "accuracy"))
    if d["lm_eval"]:
        rows = [[v, t, _pct(r["acc"]), _pct(r["acc_norm"]), r.get("n") or ""]
                for v, per in d["lm_eval"]["variants"].items() for t, r in per.items()]
        out.append("<h2>lm-evaluation-harness</h2>")
        out.append(_table(["variant", "task", "acc", "acc_norm", "n"], rows, numeric_from=2))
    if d["layers"]:
        m = d["merge"] or {}
        note = (f"Mean sparsity after the merge {_pct(m.get('mean_sparsity'))}, "
                f"{m.get('total_new_nonzeros', 'n/a')} new nonzeros; the same adapters merged "
                f"without the mask would leave the adapted layers {_pct(m.get('mean_unmasked_density'))}"
                " dense.") if m else "No merge stage yet."
        out.append("<h2>Sparsity per layer</h2>")
        out.append(f'<p class="note">{html.escape(note)}</p>')
        out.append(_img(plots.sparsity_per_layer(d["layers"], folder / "sparsity.png"), "sparsity"))
    if d["train_log"]:
        f = d["finetune"] or {}
        out.append("<h2>Fine-tuning</h2>")
        spp = f.get("seconds_per_step")
        out.append(f'<p class="note">{len(d["train_log"])} steps, {f.get("precision", "")}, '
                   f'{spp:.2f} s/step, final loss {f.get("final_loss", 0):.3f}</p>' if spp else "")
        out.append(_img(plots.loss_curve(d["train_log"], folder / "loss.png"), "training loss"))
    if d["rank_counts"] and any(len(c) > 1 for c in d["rank_counts"].values()):
        out.append("<h2>NLS rank sampling</h2>")
        out.append(_img(plots.rank_histogram(d["rank_counts"], folder / "ranks.png"), "ranks"))
    sel = d["select"] or {}
    if sel:
        out.append("<h2>Sub-adapter selection</h2>")
        search = sel.get("search")
        if search and d["search_log"]:
            out.append(f'<p class="note">{html.escape(search["strategy"])}: '
                       f'{search["evaluations"]} configurations on {search["holdout_items"]} held-out '
                       f'train items; {search["metric"]} {_pct(search["best_score"])} vs heuristic '
                       f'{_pct(search["heuristic_score"])}.</p>')
            out.append(_img(plots.pareto(d["search_log"], d["pareto"] or [], search["metric"],
                                         folder / "pareto.png"), "Pareto front"))
        else:
            out.append(f'<p class="note">Heuristic sub-adapter ({sel.get("adapter_params", 0):,} '
                       "active adapter parameters); no search was run (`select.strategy: "
                       "hill-climb`, `evolution` or `candidates` draws the Pareto front).</p>")
    v = d["verify"]
    if v:
        cls, word = ("ok", "PASS") if v["ok"] else ("bad", "FAIL")
        out.append("<h2>OpenVINO export</h2>")
        out.append(f'<p><span class="{cls}">{word}</span>: {v["format"]}, {v["layers"]} layers, '
                   f'{v["new_nonzeros"]} new nonzeros, INT4 mismatches {v["int4_mismatch"]} of '
                   f'{v["int4_checked"]}, max |Δlogit| {v["max_abs_logit_diff"]:.2e} '
                   f'(tolerance {v["logit_tol"]:.0e}), greedy tokens match: {v["greedy_match"]}.</p>')
    return out


def write_report(run: Path, out: Path | None = None) -> Path:
    """Write RUN/report/index.html (and its PNGs); returns the HTML path.

    Raises:
        ArtifactError: RUN holds no stage output at all.
    """
    run = Path(run)
    d = collect(run)
    if not any(d[k] for k in ("layers", "train_log", "summary", "select")):
        raise ArtifactError(f"{run} holds no sqft stage output; give a run directory (the --out "
                            "of `sqft run`).")
    folder = Path(out) if out else RunDir(run).report
    folder.mkdir(parents=True, exist_ok=True)
    body = "\n".join(_sections(d, folder))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sqft report: "
            f"{html.escape(run.name)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
            f"<body><h1>sqft report: {html.escape(run.name)}</h1><p class='note'>"
            f"{html.escape(d['run'])}, written {time.strftime('%Y-%m-%d %H:%M')}</p>{body}</body></html>")
    return write_text_atomic(folder / "index.html", page)
