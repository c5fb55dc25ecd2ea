"""Judge a probe's removed models as the grid's adversary would, beside the grid's own attempts.

A probe (``scripts.laundering_probe``, ``scripts.refresh_probe``) measures test accuracy and true
retention; whether a setting would change the verdict also depends on what the adversary sees of it:
its held-out accuracy and its proxy retention. This runs the ``robustness`` stage on each of the
experiment's cells with the probe's models added to the cell's removed models (linked, not copied),
writes one row per attempt, and prints the verdict's counts with and without the probe's attempts:
seeds whose pick removed the mark within the budget, and seeds where some attempt did in hindsight.

    OMP_NUM_THREADS=1 python -m scripts.judge_probe --probe /tmp/refresh_probe --schemes square content noise \\
        --out results/refresh_probe_judged.csv
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from scripts.experiment_work import add_cell_arguments, seed_work


def link(source: Path, target: Path) -> None:
    """``target`` as a symbolic link to ``source`` (replaced if there)."""
    target.unlink(missing_ok=True)
    os.symlink(source.resolve(), target)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", type=Path, required=True,
                        help="a probe's --work folder: seed<k>/<scheme>/<fraction>/<setting>/model.pt (required)")
    parser.add_argument("--jobs", type=int, default=2, help="cells judged at once, one torch thread each")
    parser.add_argument("--out", required=True, help="one row per attempt (required)")
    add_cell_arguments(parser, ("square", "content"), ("0.1",))
    args = parser.parse_args(argv)

    from wmbench.files import read_json, write_csv_atomic
    from wmbench.jobs import Job, run_jobs
    from wmbench.robustness import Attempt, split_label, verdicts

    jobs, judged = [], []
    for seed in args.seeds:
        work = seed_work(args.experiment, seed)
        for scheme in args.schemes:
            for fraction in args.fractions:
                cell, probe = work / scheme / fraction, args.probe / f"seed{seed}" / scheme / fraction
                added = sorted(probe.glob("*/model.pt"))
                if not added:
                    raise SystemExit(f"{probe} holds no probe models (<setting>/model.pt): run the probe first")
                folder = probe / "judge"
                (folder / "models" / "removed").mkdir(parents=True, exist_ok=True)
                link(cell / "models" / "watermarked.pt", folder / "models" / "watermarked.pt")
                for model in sorted((cell / "models" / "removed").glob("*.pt")):
                    link(model, folder / "models" / "removed" / model.name)
                for model in added:
                    link(model, folder / "models" / "removed" / f"{model.parent.name}.pt")
                jobs.append(Job(f"judge seed{seed} {scheme}-{fraction}", "stages.grid:stage", (
                    "robustness", ["--params", str(cell / "params.yaml"), "--prepared", str(cell / "prepared"),
                                   "--models", str(folder / "models"),
                                   "--vanilla", str(cell / "models" / "vanilla" / "calibration.json"),
                                   "--reconstruct", str(cell / "reconstruct"),
                                   "--metrics", str(folder / "robustness.json"),
                                   "--plot", str(folder / "robustness.csv"), "--report", str(folder / "robustness.md"),
                                   "--frontier", str(folder / "frontier.png"),
                                   "--settings", str(folder / "settings.json")]), str(args.probe / "judge.log")))
                judged.append((seed, scheme, fraction, folder, {m.parent.name for m in added}))
    run_jobs(jobs, args.jobs, say=print)

    rows, attempts = [], {}
    for seed, scheme, fraction, folder, added in judged:
        metrics = read_json(folder / "robustness.json")
        for label, figures in metrics["attempts"].items():
            method, setting = split_label(label)
            rows.append({"seed": seed, "scheme": scheme, "adversary_fraction": float(fraction), "model": label,
                         "probe": label in added, "threshold": metrics["threshold"], **figures})
            attempts.setdefault(float(fraction), []).append((label in added, Attempt(
                scheme=scheme, method=method, setting=setting, seed=seed,
                estimated_drop=figures["holdout_acc_drop"], proxy_wm_acc=figures["proxy_wm_acc"],
                test_acc_drop=figures["test_acc_drop"], wm_acc=figures["wm_acc"], threshold=metrics["threshold"])))
    write_csv_atomic(args.out, rows)

    print("| data | watermark | budget (points) | grid's menu: picks removed (hindsight) | with the probe's |")
    print("|---|---|---|---|---|")
    for fraction, found in sorted(attempts.items(), reverse=True):
        before = verdicts([a for probe, a in found if not probe])
        after = {(v.scheme, v.budget): v for v in verdicts([a for _, a in found])}
        for v in before:
            w = after[v.scheme, v.budget]
            picked = sorted({p.label for p in w.chosen} & {a.label for probe, a in found if probe})
            print(f"| {fraction:.1%} | {v.scheme} | {100 * v.budget:g} | {v.removed_seeds}/{len(v.seeds)} "
                  f"({v.removable_in_hindsight}/{len(v.seeds)}) | {w.removed_seeds}/{len(w.seeds)} "
                  f"({w.removable_in_hindsight}/{len(w.seeds)}){'; picks ' + ', '.join(picked) if picked else ''} |")


if __name__ == "__main__":
    main()
