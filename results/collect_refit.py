"""Rows of ``results/wild_fashion_mnist.csv`` from REFIT runs on the Aiken grid's models (see README here).

    python results/collect_refit.py .cache/refit results/aiken_fashion_mnist.csv results/wild_fashion_mnist.csv
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

SETTINGS = (("authors", "variant=authors"), ("wild", "variant=wild,lr=0.005"))


def main(runs: Path, aiken_csv: Path, dest: Path) -> None:
    """One row per finished run, with the watermarked model's accuracy and threshold from the Aiken grid."""
    with open(aiken_csv, newline="") as handle:
        base = {(r["scheme"], r["seed"]): r for r in csv.DictReader(handle)
                if r["scheme"] != "clean" and float(r["adversary_fraction"]) == 0.1}
    rows = []
    for variant, setting in SETTINGS:
        for seed in "012":
            for scheme in ("square", "content", "noise"):
                path = runs / f"{variant}-{scheme}-{seed}.json"
                if not path.exists():
                    continue
                metrics, cell = json.loads(path.read_text()), base[scheme, seed]
                rows.append({"scheme": scheme, "method": "refit", "setting": setting, "adversary_fraction": 0.1,
                             "seed": int(seed), "test_acc_watermarked": cell["test_acc_watermarked"],
                             "test_acc": metrics["test_acc"], "wm_acc": metrics["wm_acc"],
                             "threshold": cell["threshold"], "seconds": metrics["time_s"]})
    with open(dest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows in {dest}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
