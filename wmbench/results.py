"""``wmbench results``: one row per DVC experiment, its changed params, then every method's outcome.

Reads ``dvc exp show --json`` (or a saved copy, ``--json FILE``): for each
experiment the params that differ from its baseline commit, then per model in
``metrics/summary.json`` its test accuracy / watermark retention in % and the
verdict: ``removed`` (retention at or below the clean models' threshold) or
``kept``, with ``not useful`` when the model is no better than training from
scratch on the adversary's data. Answers "which method removed the watermark,
at what cost" across experiments in one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY = "metrics/summary.json"


def dvc_executable() -> str:
    """``dvc`` beside the running interpreter (a virtual environment's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / ("dvc.exe" if os.name == "nt" else "dvc")
    return str(beside) if beside.is_file() else (shutil.which("dvc") or "dvc")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _params(data: Mapping[str, Any]) -> dict[str, Any]:
    return flatten(data.get("params", {}).get("params.yaml", {}).get("data", {}) or {})


def _summary(data: Mapping[str, Any]) -> dict[str, Any] | None:
    return (data.get("metrics", {}).get(SUMMARY, {}) or {}).get("data")


def experiment_rows(exp_show: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``{"name", "changed": {key: value}, "summary": {...}}`` per baseline and experiment with a summary.

    An experiment's changed params are against its baseline commit; the workspace's against the newest commit.
    """
    rows = []
    commits = [b for b in exp_show if b.get("rev") != "workspace"]
    head = _params(commits[0].get("data") or {}) if commits else {}
    for baseline in exp_show:
        base_data = baseline.get("data") or {}
        base_params = _params(base_data)
        if _summary(base_data):
            rev = str(baseline.get("rev", "?"))
            workspace = rev == "workspace"
            changed = {k: v for k, v in base_params.items() if head.get(k) != v} if workspace and commits else {}
            name = baseline.get("name") or (rev if workspace else rev[:7])
            rows.append({"name": name, "changed": changed, "summary": _summary(base_data)})
        for experiment in baseline.get("experiments") or []:
            revs = experiment.get("revs") or []
            if not revs or revs[0].get("error") or not _summary(revs[0].get("data") or {}):
                continue
            data = revs[0]["data"]
            params = _params(data)
            changed = {k: v for k, v in params.items() if base_params.get(k) != v}
            name = experiment.get("name") or revs[0].get("name") or str(revs[0].get("rev", "?"))[:7]
            rows.append({"name": name, "changed": changed, "summary": _summary(data)})
    return rows


def verdict(row: Mapping[str, Any]) -> str:
    """``removed`` / ``kept``, plus ``not useful`` when no better than the scratch baseline."""
    text = "removed" if row.get("removed") else "kept"
    return text + (", not useful" if row.get("useful") is False else "")


def table(rows: Sequence[Mapping[str, Any]], methods: Iterable[str] = ()) -> str:
    """A markdown table: experiment, changed params, then ``test % / retention % verdict`` per model."""
    methods = list(methods)
    if not methods:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update({name: None for name, value in row["summary"].items()
                         if isinstance(value, dict) and not name.startswith("vanilla")})
        methods = sorted(seen, key=lambda name: (name != "watermarked", name == "scratch", name))
    header = ["experiment", "changed params", *methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        changed = ", ".join(f"{k}={v}" for k, v in sorted(row["changed"].items())) or "(baseline)"
        cells = [row["name"], changed]
        for method in methods:
            scores = row["summary"].get(method)
            cells.append("-" if not isinstance(scores, dict) else
                         f"{100 * scores['test_acc']:.1f} / {100 * scores['wm_acc']:.1f} {verdict(scores)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wmbench results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="",
                        help="comma-separated models to show, e.g. wild_js,refit,scratch (default: all but the "
                             "clean models)")
    parser.add_argument("--json", default="", metavar="FILE",
                        help="read a saved `dvc exp show --json` instead of running it (default: run it here)")
    args = parser.parse_args(argv)
    if args.json:
        exp_show = json.loads(Path(args.json).read_text())
    else:
        result = subprocess.run([dvc_executable(), "exp", "show", "--json"], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            print(f"wmbench results: `dvc exp show --json` failed: {result.stderr.strip()}", file=sys.stderr)
            return 2
        exp_show = json.loads(result.stdout)
    rows = experiment_rows(exp_show)
    if not rows:
        print(f"wmbench results: no experiment has {SUMMARY}; run `dvc repro` or `dvc exp run` first",
              file=sys.stderr)
        return 1
    print("test accuracy / watermark retention in %, then the verdict (evaluate stage)\n")
    print(table(rows, [m for m in args.methods.split(",") if m]), end="")
    return 0
