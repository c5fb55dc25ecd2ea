"""Probe: a wider region for the adversary's retention proxy (``robustness.proxy: wide``), placed by budgeted searches.

The ``robustness`` stage's region proxy (:func:`wmbench.proxy.region_retention`)
re-optimises a pattern on each removed model inside a region around the
trigger Neural Cleanse found on the watermarked model: twice that trigger's
support (:func:`wmbench.proxy.trigger_region`). Neural Cleanse keeps the
*smallest* trigger (Wang et al., Sec. IV-A), which can be a part of the mark:
on content's seed 1 of the ninth run it is the first letters of "TEST", and
Laundering against it leaves 34-43 % of the true mark while the region reads
1-2 %. This probe widens the region where the model itself points. Each proxy
reads every removed model as the region proxy does (same steps, same
random stream) inside another region, placed on the **watermarked** model by
triggers searched afresh with their mask's L1 held at most twice Neural
Cleanse's norm for the suspected class (:func:`wmbench.proxy.budgeted_trigger`),
so they can spread over more of what the model responds to; the region is the
pixels where their mean mask is strongest:

- ``wide``: what ``robustness.proxy: wide`` computes (``wide_wm_acc``,
  :func:`wmbench.proxy.wide_region`): four searches averaged
  (``proxy_searches``), ``proxy_multiple`` (2) x ``proxy_area`` (2) x the norm
  pixels, the stage's random stream;
- ``wide_again``: the same from another random stream (is the region stable?);
- ``support``: the same mean mask as ``wide``, the region sized as the region
  proxy sizes its own, by the support (2 x 2 x the pixels above 0.05);
- ``single``, ``single_again``: one search instead of four, on the two streams.

Per cell, ``wide_jaccard`` and ``single_jaccard`` are the overlap (Jaccard) of
the two streams' regions.

One row per model of each cell (the watermarked and every removed model the
grid judged, ``experiments/fashion_mnist/work/seed<k>/``; ``--experiment`` for a
copy run on other seeds), beside the grid's own figures (its region proxy,
held-out and test accuracy lost, true retention). The true retention is read
here only to judge proxies; the summary replays the adversary's pick
(:func:`wmbench.robustness.verdicts`) with each proxy.

    OMP_NUM_THREADS=1 python -m scripts.wide_proxy_probe --schemes square content noise \
        --out results/wide_proxy_probe.csv                                   # about 15 min on 2 cores
    OMP_NUM_THREADS=1 python -m scripts.wide_proxy_probe --experiment /tmp/oos/experiments/fashion_mnist \
        --seeds 4 5 6 --schemes content --out results/wide_proxy_probe_oos.csv   # out of sample
    python -m scripts.wide_proxy_probe --summary results/wide_proxy_probe.csv   # the tables again
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from scripts.experiment_work import EXPERIMENT, add_cell_arguments, load_cell, seed_work
from scripts.proxy_probe import rank_correlation, scratch_reading, verdict_table

STREAMS = {"wide": ("wide", None), "wide_again": ("wide-again", None), "single": ("wide", 1),
           "single_again": ("wide-again", 1)}  # region -> (random stream, searches: None for proxy_searches)
REGIONS = ("wide", "wide_again", "support", "single", "single_again")


def probe_cell(seed: int, scheme: str, fraction: str, experiment: Path = EXPERIMENT) -> list[dict[str, Any]]:
    """Every proxy of the watermarked and every removed model of one cell of ``experiment``."""
    import torch

    from wmbench.checkpoint import load_checkpoint
    from wmbench.proxy import SUPPORT_LEVEL, mean_budgeted_mask, region_retention, strongest
    from wmbench.seeding import generator

    torch.set_num_threads(1)
    device = torch.device("cpu")
    loaded = load_cell(experiment, seed, scheme, fraction, device)
    params, train, holdout, found = loaded.params, loaded.train, loaded.holdout, loaded.reconstruction
    suspected, figures, models = loaded.suspected, loaded.figures, loaded.models
    mask = found.masks[found.row(suspected)].float()
    settings = params.robustness
    watermarked = load_checkpoint(models["watermarked"]).build_model().to(device).eval()
    multiple, area = settings.proxy_multiple, settings.proxy_area
    norm, support = float(mask.sum()), int((mask > SUPPORT_LEVEL).sum())
    means = {key: mean_budgeted_mask(watermarked, multiple * norm, suspected, train, settings.proxy_search_steps,
                                     searches or settings.proxy_searches, generator(params.seed, stream, device))
             for key, (stream, searches) in STREAMS.items()}
    regions = {key: strongest(mean, round(multiple * area * norm)) for key, mean in means.items()}
    regions["support"] = strongest(means["wide"], round(multiple * area * support))  # wmbench's first sizing
    regions = {key: regions[key] for key in REGIONS}
    overlap = {f"{key}_jaccard": round(float((regions[key] * regions[f"{key}_again"]).sum()
                                             / ((regions[key] + regions[f"{key}_again"]) > 0).sum()), 3)
               for key in ("wide", "single")}
    rows = []
    for name, path in models.items():
        model = load_checkpoint(path).build_model().to(device).eval()
        row: dict[str, Any] = {"seed": seed, "scheme": scheme, "adversary_fraction": float(fraction), "model": name,
                               "suspected": suspected, "threshold": figures["threshold"],
                               "nc_l1": round(norm, 3), "nc_support": support,
                               **{f"{key}_pixels": int(region.sum()) for key, region in regions.items()}, **overlap}
        for key, region in regions.items():
            row[key] = round(region_retention(model, region, suspected, train, holdout, settings.proxy_steps,
                                              generator(params.seed, "proxy", device)), 4)
        true = figures["attempts"].get(name, {"region_wm_acc": math.nan, "holdout_acc_drop": 0.0,
                                              "test_acc_drop": 0.0, "wm_acc": figures["watermarked"]["wm_acc"]})
        row["region"] = true["region_wm_acc"]
        row.update({key: true[key] for key in ("holdout_acc_drop", "test_acc_drop", "wm_acc")})
        rows.append(row)
    print(summary(rows), flush=True)
    return rows


def proxy_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The proxies a probe wrote: the grid's ``region`` and this probe's columns."""
    return ["region", *(key for key in REGIONS if key in rows[0])]


def summary(rows: list[dict[str, Any]]) -> str:
    """Per proxy: Spearman's rank correlation with the true retention over the removed models, and what the
    adversary's own clean model (``scratch``) reads on it."""
    removed = [row for row in rows if row["model"] != "watermarked"]
    parts = [f"{key} rho {rank_correlation(removed, key):.2f}" + scratch_reading(removed, key)
             for key in proxy_keys(rows)]
    return f"seed {rows[0]['seed']} {rows[0]['scheme']} {float(rows[0]['adversary_fraction']):g}: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--jobs", type=int, default=2, help="cells at once, one torch thread each")
    parser.add_argument("--out", default="results/wide_proxy_probe.csv", help="one row per model")
    parser.add_argument("--summary", metavar="CSV", help="print the summaries of a saved probe and stop")
    args = parser.parse_args(argv)

    from wmbench.files import read_csv, write_csv_atomic

    if args.summary:
        rows = read_csv(args.summary)
        for key in dict.fromkeys((r["seed"], r["scheme"], r["adversary_fraction"]) for r in rows):
            print(summary([r for r in rows if (r["seed"], r["scheme"], r["adversary_fraction"]) == key]))
    else:
        for seed in args.seeds:
            seed_work(args.experiment, seed)  # every seed's models before any is read
        cells = [(s, m, f, args.experiment) for s in args.seeds for m in args.schemes for f in args.fractions]
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = [row for cell in pool.map(probe_cell, *zip(*cells, strict=True)) for row in cell]
        write_csv_atomic(args.out, rows)
        print(f"{len(rows)} rows -> {args.out}")
    for fraction in dict.fromkeys(str(r["adversary_fraction"]) for r in rows):
        print(f"\nThe verdict by each proxy, adversary fraction {float(fraction):g}: seeds removed (picks' mean "
              "retention)\n")
        print(verdict_table([r for r in rows if str(r["adversary_fraction"]) == fraction], proxy_keys(rows)))


if __name__ == "__main__":
    main()
