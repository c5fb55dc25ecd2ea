"""Stage ``robustness``: can the adversary remove the watermark while losing at most N points of accuracy?

The owner's question, answered in the two steps of :mod:`wmbench.robustness`:

1. **What the adversary sees** of every removed model (``models/removed/*.pt``),
   on the slice of its images it kept aside (``data.adversary_holdout``): the
   held-out accuracy it lost, and its proxy retention (:mod:`wmbench.proxy`,
   ``robustness.proxy``): by default that of a pattern re-optimised on the
   removed model around the trigger Neural Cleanse reconstructed for the
   suspected class; ``trigger`` takes that reconstructed trigger as it is;
   ``wide`` re-optimises in a wider region, where a trigger of a few times
   that one's norm spreads on the watermarked model. The one named and those
   in ``robustness.compare`` (default: the trigger, which costs one pass) are
   written per removal (``trigger_wm_acc``, ``region_wm_acc``, ``wide_wm_acc``);
   the wide proxy's searches and re-optimised patterns were two thirds of the
   stage's time on ``digits``, so it is measured only where asked for.
2. **The verdict** per budget (``robustness.budgets``): the adversary picks the
   attempt of lowest proxy retention among those whose held-out loss fits the
   budget; the pick's test-accuracy loss and true retention are then measured
   against the clean models' threshold.

One pipeline run is one seed with one setting per method: a small verdict.
A removed model named ``<method>@<setting>`` (the ``grid`` stage's variants)
counts as another setting of its method. The same attempts from several seeds
and settings (e.g. ``dvc exp run`` cells) feed
:func:`wmbench.robustness.verdicts` for the full one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from wmbench.checkpoint import load_checkpoint
from wmbench.files import read_json, write_csv_atomic, write_json_atomic, write_text_atomic
from wmbench.params import PROXIES, RobustnessParams
from wmbench.plotting import plot_robustness_frontier
from wmbench.precision import autocast, channels_last_model, channels_last_prepared
from wmbench.prepared import load_prepared
from wmbench.proxy import (
    adversary_holdout,
    adversary_training_images,
    proxy_retention,
    region_retention,
    suspected_class,
    trigger_region,
    wide_region,
)
from wmbench.reconstruct import Reconstruction, load_reconstruction
from wmbench.robustness import Attempt, Verdict, frontier, picks, report, split_label, to_metrics, verdicts
from wmbench.seeding import generator
from wmbench.stage import (
    SETTINGS_HELP,
    Timer,
    run_settings,
    run_stage,
    stage_parser,
    start,
    write_settings,
    writing_outputs,
)
from wmbench.training import DeviceData, accuracy


@dataclass(frozen=True)
class Yardsticks:
    """The adversary's (its images, held-out slice, reconstructed trigger, suspected class, proxy settings, the
    watermarked model it holds) and the owner's (test, trigger set)."""

    train: torch.Tensor
    holdout: DeviceData
    reconstruction: Reconstruction
    suspected: int
    test: DeviceData
    trigger: DeviceData
    settings: RobustnessParams
    seed: int
    watermarked: torch.nn.Module | None = None  # where the wide proxy searches its region; needed for it alone

    @cached_property
    def region(self) -> torch.Tensor:
        """Where the region proxy re-optimises its pattern: around the suspected class's reconstructed mask."""
        mask = self.reconstruction.masks[self.reconstruction.row(self.suspected)].float()
        return trigger_region(mask, self.settings.proxy_area)

    @cached_property
    def wide(self) -> torch.Tensor:
        """Where the wide proxy re-optimises its pattern: where a trigger of ``robustness.proxy_multiple`` times the
        reconstructed one's norm spreads on the watermarked model (searched once, from its own random stream)."""
        if self.watermarked is None:
            raise ValueError("the wide proxy searches its region on the watermarked model; give Yardsticks it")
        return wide_region(self.watermarked, self.reconstruction, self.suspected, self.train,
                           self.settings.proxy_multiple, self.settings.proxy_area, self.settings.proxy_search_steps,
                           self.settings.proxy_searches, generator(self.seed, "wide", self.train.device))

    @property
    def measured(self) -> tuple[str, ...]:
        """The proxies measured: ``robustness.proxy`` and those in ``robustness.compare``, cheapest first."""
        return tuple(key for key in PROXIES if key == self.settings.proxy or key in self.settings.compare)

    def retention(self, key: str, model: torch.nn.Module) -> float:
        """One proxy's retention; the region proxies' random stream starts afresh for every model, so each is
        judged the same way."""
        if key == "trigger":
            return proxy_retention(model, self.reconstruction, self.suspected, self.holdout)
        region = self.region if key == "region" else self.wide
        return region_retention(model, region, self.suspected, self.train, self.holdout, self.settings.proxy_steps,
                                generator(self.seed, "proxy", self.train.device))

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """The measured proxies (``proxy_wm_acc`` is the one ``robustness.proxy`` names) and the true figures."""
        figures = {"holdout_acc": accuracy(model, self.holdout),
                   **{f"{key}_wm_acc": self.retention(key, model) for key in self.measured}}
        return {**figures, "proxy_wm_acc": figures[f"{self.settings.proxy}_wm_acc"],
                "test_acc": accuracy(model, self.test), "wm_acc": accuracy(model, self.trigger)}


def judge_attempts(removed: dict[str, torch.nn.Module], watermarked: torch.nn.Module, yardsticks: Yardsticks,
                   scheme: str, seed: int, threshold: float
                   ) -> tuple[dict[str, float], list[Attempt], dict[str, dict[str, float]]]:
    """Step 1: the watermarked model's figures, one :class:`Attempt` per removed model, and every proxy's figures
    per removed model (the attempt carries the one ``robustness.proxy`` names)."""
    baseline = yardsticks.measure(watermarked)
    found, proxies = [], {}
    for name, model in removed.items():
        scores = yardsticks.measure(model)
        proxies[name] = {f"{key}_wm_acc": scores[f"{key}_wm_acc"] for key in yardsticks.measured}
        method, setting = split_label(name)
        found.append(Attempt(scheme=scheme, method=method, setting=setting, seed=seed,
                             estimated_drop=baseline["holdout_acc"] - scores["holdout_acc"],
                             proxy_wm_acc=scores["proxy_wm_acc"],
                             test_acc_drop=baseline["test_acc"] - scores["test_acc"], wm_acc=scores["wm_acc"],
                             threshold=threshold))
    return baseline, found, proxies


def write_report(path: str, scheme: str, seed: int, yardsticks: Yardsticks, threshold: float,
                 judged: Sequence[Verdict], found: Sequence[Attempt]) -> None:
    """The verdict table and every attempt, as markdown."""
    lines = [f"# Can the `{scheme}` watermark be removed? (seed {seed})", "",
             f"The adversary judges on {len(yardsticks.holdout)} held-out images of its own and suspects class "
             f"{yardsticks.suspected} (smallest reconstructed trigger). Ownership threshold "
             f"{100 * threshold:.1f} %.", "", report(judged), "",
             f"| removal | held-out acc lost (points) | proxy retention % ({yardsticks.settings.proxy}) | "
             "test acc lost (points) | wm_acc % |",
             "|---|---|---|---|---|"]
    lines += [f"| {a.label} | {100 * a.estimated_drop:.1f} | {100 * a.proxy_wm_acc:.1f} | "
              f"{100 * a.test_acc_drop:.1f} | {100 * a.wm_acc:.1f} |" for a in found]
    write_text_atomic(path, "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "robustness")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--models", default="models", help="folder with watermarked.pt and removed/*.pt")
    parser.add_argument("--vanilla", default="models/vanilla/calibration.json", help="the clean models' threshold")
    parser.add_argument("--reconstruct", default="artifacts/reconstruct",
                        help="the reconstruct stage's folder (triggers.npz): the adversary's proxy trigger")
    parser.add_argument("--metrics", default="metrics/robustness.json",
                        help="per watermark and budget: wm_acc, test_acc_drop, method, removed; per removal its "
                             "figures")
    parser.add_argument("--plot", default="plots/robustness.csv", help="one row per removed model")
    parser.add_argument("--report", default="plots/robustness.md", help="the verdict as markdown")
    parser.add_argument("--frontier", default="plots/robustness_frontier.png",
                        help="retention against test-accuracy loss per method, budgets and threshold marked")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)
    params, device = start(args.params, args.threads)
    prepared = channels_last_prepared(load_prepared(args.prepared), params.channels_last)
    holdout = adversary_holdout(*prepared.arrays["adversary"], params.data.adversary_holdout, params.seed, device)
    paths = {p.stem: p for p in sorted((Path(args.models) / "removed").glob("*.pt"))}
    if not paths:
        raise FileNotFoundError(f"no removed models in {args.models}/removed; run `dvc repro remove` first")
    reconstruction = load_reconstruction(Path(args.reconstruct) / "triggers.npz", device)
    threshold = float(read_json(args.vanilla)["threshold"])
    settings = run_settings("robustness", params, device, robustness=params.robustness,
                            adversary_holdout=params.data.adversary_holdout)
    timer = Timer()

    def build(path: Path) -> torch.nn.Module:
        return channels_last_model(load_checkpoint(path).build_model().to(device), params.channels_last).eval()

    train = adversary_training_images(*prepared.arrays["adversary"], params.data.adversary_holdout, params.seed,
                                      device)
    watermarked = build(Path(args.models) / "watermarked.pt")
    yardsticks = Yardsticks(train, holdout, reconstruction, suspected_class(reconstruction),
                            prepared.on("test", device), prepared.on("trigger", device), params.robustness,
                            params.seed, watermarked)
    scheme = str(prepared.info["scheme"])
    with autocast(params.precision, device), torch.no_grad():
        baseline, found, proxies = judge_attempts({name: build(path) for name, path in paths.items()},
                                                  watermarked, yardsticks, scheme, params.seed, threshold)
    judged = verdicts(found, params.robustness.budgets)

    rows = [{"model": a.label, "holdout_acc_drop": round(a.estimated_drop, 6),
             "proxy_wm_acc": round(a.proxy_wm_acc, 6),
             **{key: round(value, 6) for key, value in proxies[a.label].items()},
             "test_acc_drop": round(a.test_acc_drop, 6),
             "wm_acc": round(a.wm_acc, 6), "removed": a.removed} for a in found]
    metrics = {**to_metrics(judged), "threshold": threshold, "suspected_class": yardsticks.suspected,
               "holdout_size": len(holdout), "watermarked": {k: round(v, 6) for k, v in baseline.items()},
               "attempts": {row["model"]: {k: v for k, v in row.items() if k != "model"} for row in rows}}
    with writing_outputs():
        write_csv_atomic(args.plot, rows)
        write_json_atomic(args.metrics, metrics)
        write_report(args.report, scheme, params.seed, yardsticks, threshold, judged, found)
        plot_robustness_frontier(frontier(found), picks(judged), threshold, args.frontier,
                                 f"Removing the {scheme} watermark, seed {params.seed}: the adversary's picks circled")
        write_settings(settings, args.metrics, args.settings)
    print(f"robustness: {len(found)} removals judged on {len(holdout)} held-out images in {timer.seconds:.1f}s")
    for verdict in judged:
        print(f"robustness: {scheme}, budget {100 * verdict.budget:g}: {verdict.text}")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
