"""Stage ``verdict`` (full-size experiments): the owner's question answered across seeds, beside the papers.

Reads every seed's ``grid`` metrics and writes, per adversary fraction and
watermark (Issue 14, :mod:`wmbench.robustness`):

1. **The verdict** per budget (``robustness.budgets``): each seed's adversary
   picks, on its own held-out slice and reconstructed trigger, the removal of
   lowest proxy retention whose held-out loss fits; the picks' measured test
   loss and retention, mean and spread over seeds; "removed within N points,
   by M" only when every seed's pick is at or below its threshold within
   budget. ``scratch`` (the adversary's data alone) is the bar, never a pick.
2. **The frontier**: every method's measured (test loss, retention), means
   over seeds, with the picks circled (``frontier_<scheme>_<fraction>.png``).
3. **The summary table**: every model's test accuracy and retention, mean and
   spread over seeds, with the papers' MNIST numbers for the same protocol
   (:func:`wmbench.sweep.paper_cell`).
4. **The yardstick's error**: per method, how far the held-out slice's loss
   was from the test set's, afterwards. When the slice is part of the owner's
   training set, a removal that wipes what the owner's model memorised looks
   costlier to the adversary than it is, and one that keeps it does not;
   ``data.holdout_pool`` draws the slice from images the owner never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from wmbench.files import read_json, write_csv_atomic, write_json_atomic, write_text_atomic
from wmbench.robustness import Attempt, mean_spread, split_label
from wmbench.stage import SETTINGS_HELP, run_stage, stage_parser, writing_outputs
from wmbench.sweep import dotted, paper_cell, paper_references
from wmbench.verdict import fraction_key, judge_fractions


def cell_attempts(scheme: str, seed: int, cell: dict[str, Any]) -> list[Attempt]:
    """One grid cell's removals as :class:`Attempt` s, in the order of their labels."""
    attempts = []
    for model, figures in sorted(cell["attempts"].items()):
        method, setting = split_label(model)  # a variant: method@key=value (stages.grid)
        attempts.append(Attempt(scheme=scheme, method=method, setting=setting, seed=seed,
                                estimated_drop=figures["holdout_acc_drop"], proxy_wm_acc=figures["proxy_wm_acc"],
                                test_acc_drop=figures["test_acc_drop"], wm_acc=figures["wm_acc"],
                                threshold=cell["threshold"]))
    return attempts


def gather(seeds: Sequence[dict[str, Any]]) -> tuple[dict[float, list[Attempt]], list[dict[str, Any]]]:
    """Every removal of every seed as an :class:`Attempt` per fraction, and one flat row per (seed, cell, model)."""
    attempts: dict[float, list[Attempt]] = {}
    rows = []
    for metrics in seeds:
        seed = int(metrics["seed"])
        for scheme, cells in sorted(metrics["cells"].items()):
            for cell in cells.values():
                fraction = float(cell["adversary_fraction"])
                attempts.setdefault(fraction, []).extend(cell_attempts(scheme, seed, cell))
                base = {"scheme": scheme, "adversary_fraction": fraction, "seed": seed,
                        "threshold": cell["threshold"], "target_detected": cell["target_detected"]}
                marked = cell["watermarked"]
                rows.append({**base, "model": "watermarked", "test_acc": marked["test_acc"],
                             "wm_acc": marked["wm_acc"], "holdout_acc_drop": 0.0,
                             "proxy_wm_acc": marked["proxy_wm_acc"], "test_acc_drop": 0.0})
                rows += [{**base, "model": model, "test_acc": figures["test_acc"], "wm_acc": figures["wm_acc"],
                          "holdout_acc_drop": figures["holdout_acc_drop"], "proxy_wm_acc": figures["proxy_wm_acc"],
                          "test_acc_drop": figures["test_acc_drop"]}
                         for model, figures in sorted(cell["attempts"].items())]
    return dict(sorted(attempts.items(), reverse=True)), rows


def summary_table(rows: Sequence[dict[str, Any]], params: dict[str, Any]) -> str:
    """Markdown: per watermark, fraction and model, the mean and spread over seeds, and the papers' numbers."""
    references = paper_references()
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scheme"], row["adversary_fraction"], row["model"]), []).append(row)
    lines = ["| watermark | adversary data | model | test acc % | test acc lost (points) | wm retention % | "
             "at or below threshold | paper (MNIST): test acc / retention |", "|---|---|---|---|---|---|---|---|"]
    for (scheme, fraction, model), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1],
                                                                                   kv[0][2] != "watermarked",
                                                                                   kv[0][2])):
        cell_params = {**dotted(params), "watermark.scheme": scheme, "data.adversary_fraction": fraction}
        below = sum(r["wm_acc"] <= r["threshold"] for r in group)
        # the papers ran each method at one setting: their numbers sit beside our plain method only
        paper = [] if split_label(model)[1] else paper_cell(references, scheme, model, fraction, cell_params)
        lines.append(
            f"| {scheme} | {100 * fraction:g}% | {model} | {mean_spread([r['test_acc'] for r in group], digits=2)} | "
            f"{mean_spread([r['test_acc_drop'] for r in group])} | {mean_spread([r['wm_acc'] for r in group])} | "
            f"{below}/{len(group)} | {'<br>'.join(paper)} |")
    thresholds: dict[tuple[str, float], list[float]] = {}
    detected: dict[tuple[str, float], list[bool]] = {}
    for row in rows:
        if row["model"] == "watermarked":
            thresholds.setdefault((row["scheme"], row["adversary_fraction"]), []).append(row["threshold"])
            detected.setdefault((row["scheme"], row["adversary_fraction"]), []).append(bool(row["target_detected"]))
    lines += ["", "| watermark | adversary data | ownership threshold % (clean models) | Neural Cleanse found the "
              "target |", "|---|---|---|---|"]
    lines += [f"| {scheme} | {100 * fraction:g}% | {mean_spread(values)} | "
              f"{sum(detected[scheme, fraction])}/{len(values)} |"
              for (scheme, fraction), values in sorted(thresholds.items(), key=lambda kv: (kv[0][0], -kv[0][1]))]
    return "\n".join(lines)


def yardstick_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per fraction and method (its variants pooled), held-out minus test points lost, mean ± spread.

    Measured after the adversary chose, over every scheme, seed and setting;
    positive: the held-out slice overstated the cost.
    """
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["model"] != "watermarked":
            groups.setdefault((row["adversary_fraction"], split_label(row["model"])[0]), []).append(row)
    lines = ["| adversary data | method | held-out points lost | test points lost | held-out minus test | models |",
             "|---|---|---|---|---|---|"]
    for (fraction, method), group in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        lines.append(
            f"| {100 * fraction:g}% | {method} | {mean_spread([r['holdout_acc_drop'] for r in group])} | "
            f"{mean_spread([r['test_acc_drop'] for r in group])} | "
            f"{mean_spread([r['holdout_acc_drop'] - r['test_acc_drop'] for r in group])} | {len(group)} |")
    return "\n".join(lines)


PROXY_TEXT = {  # robustness.proxy, as the report's first paragraph says it (wmbench.proxy)
    "region": "a pattern it re-optimises on each removed model around Neural Cleanse's trigger for the class it "
              "suspects (`robustness.proxy: region`)",
    "trigger": "Neural Cleanse's trigger for the class it suspects (`robustness.proxy: trigger`)",
    "wide": "a pattern it re-optimises on each removed model in a wider region, where triggers allowed a few "
            "times the norm of Neural Cleanse's for the class it suspects spread on the watermarked model "
            "(`robustness.proxy: wide`)",
}
OWN_SLICE = " (images of its own the owner never trained on: `data.holdout_pool`)"


def slice_provenance(pool: float) -> str:
    """Where the held-out slice comes from (``data.holdout_pool``), and the bias that follows."""
    if pool:
        return (f"The slice is images of the adversary's own, from the {100 * pool:g} % of the training split kept "
                "from the owner (`data.holdout_pool`): no model saw them, so only sampling error separates the two.")
    return ("The slice is part of the owner's training set: a removal that wipes what the owner's model memorised "
            "looks costlier on it than it is, so the adversary's choice leans towards the removals that change the "
            "model least (`data.holdout_pool` > 0 gives the adversary images the owner never saw instead).")


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "verdict")
    parser.add_argument("--cells", default="cells", help="folder of the grid stage's metrics, seed<k>.json per seed")
    parser.add_argument("--grid", default="grid.yaml", help="the grid's settings: its `seeds` are the files read")
    parser.add_argument("--metrics", default="metrics/robustness.json",
                        help="fraction_<f>.<scheme>.within_<points>.{method, wm_acc, test_acc_drop, removed, ...}")
    parser.add_argument("--report", default="report.md", help="the verdict, the summary table and the papers' rows")
    parser.add_argument("--plots", default="plots", help="folder for the frontier plots and attempts.csv")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)

    from wmbench.params import parse_params

    raw = yaml.safe_load(Path(args.params).read_text())
    params = parse_params(raw)
    wanted = yaml.safe_load(Path(args.grid).read_text()).get("seeds") or []
    missing = [seed for seed in wanted if not (Path(args.cells) / f"seed{seed}.json").is_file()]
    if not wanted or missing:
        raise FileNotFoundError(f"{args.grid} lists seeds {wanted}; {args.cells}/seed<k>.json is missing for "
                                f"{missing}: run the grid stage for them first (dvc repro)")
    seeds = [read_json(Path(args.cells) / f"seed{seed}.json") for seed in sorted(wanted)]
    attempts, rows = gather(seeds)
    plots = Path(args.plots)
    with writing_outputs():
        tables, metrics = judge_fractions(attempts, plots, "frontier_", params.robustness.budgets)
        holdout = params.data.adversary_holdout
        text = "\n\n".join([
            f"# Can an adversary remove the watermark? {params.data.name}, `{params.model.arch}`, "
            f"seeds {', '.join(str(m['seed']) for m in seeds)}",
            f"Each seed's adversary trains on {100 * (1 - holdout):g} % of its images and chooses on the other "
            f"{100 * holdout:g} %{OWN_SLICE if params.data.holdout_pool else ''}, judging retention by "
            f"{PROXY_TEXT[params.robustness.proxy]}; test accuracy and the "
            "owner's trigger set are measured after it chose. A watermark is removed within N points only when "
            "every seed's pick is at or below that seed's ownership threshold (the highest rate a clean model "
            "reached at any epoch, Aiken et al. Sec. 7.1) and lost at most N points on the test set. Training from "
            "scratch on the adversary's images alone (`scratch`) is the bar a removal must beat, listed among the "
            "models below and never picked. "
            "The last column counts the seeds on which some attempt did so, known only from the test set afterwards: "
            "where it exceeds the picks', the adversary's own figures missed a removal its menu had; on the seeds "
            "it leaves out, no attempt on the menu removes the mark within that budget. The menu (grid.yaml "
            "`methods` and `variants`) is the experiment's choice: one settled on these seeds' outcomes flatters "
            "this verdict, so grid.yaml says which runs settled it and seeds run afterwards check it.",
            tables, "## Every model, mean ± spread over seeds, beside the papers", summary_table(rows, raw),
            "## How far the adversary's held-out slice misjudged each method's cost",
            "Held-out points lost minus test points lost, every scheme, seed and setting of a method, measured "
            f"after the adversary chose. {slice_provenance(params.data.holdout_pool)}",
            yardstick_table(rows)])
        write_text_atomic(args.report, text + "\n")
        write_json_atomic(args.metrics, {**metrics, "seeds": len(seeds)})
        write_csv_atomic(plots / "attempts.csv", rows)
        if args.settings:
            write_json_atomic(args.settings, {"stage": "verdict", "seeds": [m["seed"] for m in seeds],
                                              "budgets": list(params.robustness.budgets),
                                              "fractions": [fraction_key(f) for f in attempts]})
    print(f"verdict: {len(seeds)} seed(s), {len(rows)} models")
    for fraction in attempts:
        for scheme, budgets in sorted(metrics[fraction_key(fraction)].items()):
            said = ", ".join(f"{key}: {'removed by ' + v['method'] if v['removed'] else 'survives'}"
                             for key, v in budgets.items())
            print(f"verdict: {scheme} at {fraction:g}: {said}")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
