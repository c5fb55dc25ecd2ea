"""CI: the default pipeline's metrics lie inside sane bounds."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml


def check() -> list[str]:
    problems = []
    embed = json.loads(Path("metrics/embed.json").read_text())
    vanilla = json.loads(Path("metrics/vanilla.json").read_text())
    summary = json.loads(Path("metrics/summary.json").read_text())
    if not embed["test_acc"] >= 0.9:
        problems.append(f"watermarked test_acc {embed['test_acc']} < 0.9")
    if not embed["wm_acc"] >= 0.9:
        problems.append(f"watermark not learned: wm_acc {embed['wm_acc']} < 0.9")
    if not 0 <= vanilla["threshold"] < 0.5:
        problems.append(f"clean-model threshold {vanilla['threshold']} outside [0, 0.5)")
    if summary["watermarked"]["removed"]:
        problems.append("the watermarked model itself counts as removed")
    for name, row in summary.items():
        if isinstance(row, dict) and not (0 <= row["test_acc"] <= 1 and 0 <= row["wm_acc"] <= 1):
            problems.append(f"{name}: accuracies out of [0, 1]: {row}")
    methods = yaml.safe_load(Path("dvc.yaml").read_text())["vars"][0]["removal_reads"]
    for method in methods:
        path = Path(f"metrics/remove/{method}.json")
        if not path.is_file() or method not in summary:
            problems.append(f"remove@{method}: {path} or its row in summary.json is missing")
            continue
        if "useful" not in summary[method]:
            problems.append(f"{method}: no `useful` verdict although a scratch model exists")
    if {"laundering", "scratch"} <= set(summary):
        if not summary["laundering"]["wm_acc"] < 0.5 * embed["wm_acc"]:
            problems.append(f"laundering left wm_acc at {summary['laundering']['wm_acc']}")
        if not 0.5 < summary["scratch"]["test_acc"] < embed["test_acc"] + 0.05:
            problems.append(f"scratch baseline test_acc {summary['scratch']['test_acc']} is not plausible")
    robustness = json.loads(Path("metrics/robustness.json").read_text())
    if set(robustness["attempts"]) != set(methods):
        problems.append(f"robustness: attempts {sorted(robustness['attempts'])} are not the methods {sorted(methods)}")
    params = yaml.safe_load(Path("params.yaml").read_text())
    scheme = params["watermark"]["scheme"]
    for budget in params["robustness"]["budgets"]:
        key = "within_" + f"{100 * budget:g}".replace(".", "_")
        verdict = robustness.get(scheme, {}).get(key)
        if verdict is None or verdict["method"] not in (*methods, "none") or not isinstance(verdict["removed"], bool):
            problems.append(f"robustness: {scheme}.{key} missing or malformed: {verdict}")
    with open("artifacts/reconstruct/classes.csv", newline="") as handle:  # per class, beside the metrics
        anomaly = [float(row["anomaly"]) for row in csv.DictReader(handle)]
    if len(anomaly) < 2 or min(anomaly) < 0:
        problems.append(f"artifacts/reconstruct/classes.csv: anomaly indices missing or negative: {anomaly}")
    return problems


def differences(first: Path, second: Path) -> list[str]:
    """Metric values that differ between two runs, ignoring wall-clock times."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not k.startswith("time_s")}
        return obj

    found = []
    for old in sorted(first.rglob("*.json")):
        new = second / old.relative_to(first)
        a, b = strip(json.loads(old.read_text())), strip(json.loads(new.read_text()))
        if a != b:
            found.append(f"{new} differs between two runs with the same seed")
    return found


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--same-as":
        found = differences(Path(sys.argv[2]), Path("metrics"))
        print("\n".join(found) or "determinism check: ok, identical metrics")
        sys.exit(1 if found else 0)
    found = check()
    for problem in found:
        print(f"metrics check: {problem}")
    print("metrics check: ok" if not found else "metrics check: FAILED")
    sys.exit(1 if found else 0)
