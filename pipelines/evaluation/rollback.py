"""Roll a line back to its previous pushed model (ML environment part).

    python -m pipelines.evaluation.rollback --line LINE [--reason TEXT] [--expect-version N]

Under the line's gate lock:

1. **Serving store**: the served version (the highest integer directory) moves to
   ``<store>/<line>/.retired/<n>/`` (one rename). TF Serving serves the highest
   version it sees, so the previous push is served again; nothing is copied and version
   numbers are never reused (the next push gets ``n + 1`` or more).
   With ``--expect-version N`` it is idempotent: refused if another version is served, a
   no-op (apart from re-checking ML Metadata) if N was already rolled back.
2. **ML Metadata**: the retired model's ``ModelBlessing`` artifacts get ``blessed=0`` and
   ``factory_override=ROLLED_BACK`` (with the reason), so TFX's LatestBlessedModelStrategy
   resolves the model now in serving as the next candidate's baseline.

The MLflow side (``champion`` alias, ``serving_status`` tags) follows from the store:
:func:`pipelines.evaluation.registry.sync_serving_state`, which
:func:`pipelines.evaluation.stage.rollback` calls after this.

Prints one JSON line: ``{"line", "retired_version", "serving_version", "retired", "serving"}``.
Exit 2 with ``factory-eval: error: ...`` when there is nothing to roll back to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.evaluation import exit_without_teardown, serving


def rollback(line: str, reason: str, expect_version: int | None = None, home: Path | None = None) -> dict[str, Any]:
    from pipelines.evaluation import pipeline
    from pipelines.evaluation.gate import line_lock

    base = layout.serving_base(line, home)
    with line_lock(line, home):
        already = (
            expect_version is not None
            and expect_version in serving.retired_versions(base)
            and expect_version not in serving.live_versions(base)
        )
        if already:  # a retried task: this version was rolled back by the first try
            retired, now_serving = expect_version, serving.serving_version(base)
        else:
            retired, now_serving = serving.retire_latest(base, reason, expected=expect_version)
        retired_info = serving.push_info(layout.retired_dir(base) / str(retired))
        serving_info = serving.push_info(base / str(now_serving))
        unblessed = []
        model_id = retired_info.get("mlmd_model_id")
        if model_id is not None:
            for blessing_id in pipeline.blessings_of_model(line, int(model_id), home):
                pipeline.set_blessing_override(line, blessing_id, False, "ROLLED_BACK", reason, home)
                unblessed.append(blessing_id)
    return {
        "line": line,
        "already_rolled_back": already,
        "reason": reason,
        "retired_version": retired,
        "serving_version": now_serving,
        "retired": retired_info,
        "serving": serving_info,
        "mlmd_unblessed": unblessed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluation.rollback")
    parser.add_argument("--line", required=True)
    parser.add_argument("--reason", default="rollback requested")
    parser.add_argument("--expect-version", type=int, default=None,
                        help="roll back only this version: refused if another is served; "
                             "a no-op if it was already rolled back (safe to retry)")
    args = parser.parse_args(argv)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING)
    try:
        out = rollback(args.line, args.reason.strip() or "rollback requested", args.expect_version)
    except serving.ServingStoreError as err:
        sys.stderr.write(f"factory-eval: error: {err}\n")
        return 2
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
