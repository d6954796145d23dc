"""`verify`: re-read the export and check it against the merge (sparsity, INT4 bits, logits),
then show one generation with OpenVINO GenAI, as a user of the export would run it."""

from __future__ import annotations

import logging

from ..artifacts import write_json_atomic
from ..errors import ArtifactError
from ..recipe import Recipe
from ..run_dir import RunDir

log = logging.getLogger(__name__)


def run(recipe: Recipe, run_dir: RunDir) -> None:
    """Writes verify.json beside the export; raises ArtifactError when a check failed."""
    from ..export.api import generate
    from ..export.verify import verify_export

    report = verify_export(run_dir.export, run_dir.merge)
    print(report.table(), flush=True)
    write_json_atomic(run_dir.verify, report.as_dict())
    if not report.ok:
        raise ArtifactError(f"the export in {run_dir.export} failed verification (table above).")
    prompt = recipe.export.verify_prompts[0]
    log.info("generate (OpenVINO GenAI, %s): %r", run_dir.export, prompt)
    print(prompt, end="", flush=True)
    generate(run_dir.export, prompt, max_new_tokens=recipe.export.max_new_tokens,
             stream=lambda piece: print(piece, end="", flush=True))
    print(flush=True)
