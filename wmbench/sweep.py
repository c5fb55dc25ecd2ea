"""A grid of experiments (schemes x adversary fractions x seeds x settings) and its tables.

Pure functions only: :func:`queue_commands` says which ``dvc exp run --queue``
calls make the grid, :func:`collect_rows` reads ``dvc exp show --json``,
:func:`markdown_table` writes the rows with the papers' numbers next to ours,
and :func:`collect_attempts` gathers every experiment's ``robustness`` figures
for the verdict across seeds and settings (:mod:`wmbench.robustness`).
``scripts/sweep.py`` runs the commands.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SUMMARY = "metrics/summary.json"
ROBUSTNESS = "metrics/robustness.json"
CELL_KEYS = ("watermark.scheme", "data.adversary_fraction", "seed")  # what makes a cell, not a setting
WILD_METHODS = ("wild_ce", "wild_js", "wild_dn")


@dataclass(frozen=True)
class PaperRow:
    """A watermark row of a paper's table and the params that give its protocol here (issue 13 part 4).

    The papers name their rows alike but mean different triggers: WILD's
    "content" is a BadNets square, Laundering's is Zhang et al.'s word.
    A paper's numbers are shown beside an experiment only when the
    experiment's params match ``settings``.
    """

    source: str
    name: str  # the row's name in the paper
    settings: Mapping[str, Any]  # dotted params.yaml keys -> values that reproduce the paper's protocol
    description: str

    @property
    def scheme(self) -> str:
        return str(self.settings["watermark.scheme"])

    def matches(self, params: Mapping[str, Any]) -> bool:
        """Whether an experiment with these (dotted) params runs this row's protocol."""
        return all(params.get(key) == value for key, value in self.settings.items())

    def label(self) -> str:
        return f'{self.source} "{self.name}"'

    def how(self) -> str:
        return " ".join(f"-S {key}={value}" for key, value in self.settings.items())


@dataclass(frozen=True)
class Reference:
    """One number pair from a paper: test accuracy and watermark retention (fractions), and where."""

    test_acc: float | None
    wm_acc: float
    fraction: float  # share of the training data the paper's adversary used
    source: str
    row: PaperRow | None = None  # the paper's watermark row, with the protocol it stands for


WILD = "WILD Tab. II"  # Liu et al., WILD, Table II: MNIST, LeNet-style model
LAUNDERING = "Laundering Tab. 2"  # Aiken et al., Neural Network Laundering, Table 2: MNIST

# Which of our schemes and options each paper row used (the papers in /work/shared/papers/).
PAPER_ROWS: dict[tuple[str, str], PaperRow] = {
    (WILD, "content"): PaperRow(
        WILD, "content", {"watermark.scheme": "square", "watermark.square.position": "bottom_right"},
        "a square at the bottom-right corner, after BadNets (Sec. IV-A)"),
    (WILD, "noise"): PaperRow(
        WILD, "noise", {"watermark.scheme": "noise", "watermark.noise.draw": "fixed"},
        "Gaussian noise as Zhang et al. (Sec. IV-A)"),
    (WILD, "unrelated"): PaperRow(
        WILD, "unrelated", {"watermark.scheme": "unrelated", "watermark.unrelated.verification": "same"},
        "100 out-of-domain images, trained on and queried, after Adi et al. (Sec. IV-A)"),
    (LAUNDERING, "content"): PaperRow(
        LAUNDERING, "content", {"watermark.scheme": "content"}, "a word on the image, Zhang et al. (Sec. 2.1)"),
    (LAUNDERING, "noise"): PaperRow(
        LAUNDERING, "noise", {"watermark.scheme": "noise", "watermark.noise.draw": "fixed"},
        "pre-specified Gaussian noise, Zhang et al. (Sec. 2.1)"),
    (LAUNDERING, "unrelated"): PaperRow(
        LAUNDERING, "unrelated", {"watermark.scheme": "unrelated", "watermark.unrelated.verification": "fresh"},
        "unrelated images (a letter for MNIST, Sec. 7.2), Zhang et al."),
}

# Paper row name -> numbers; WILD's REFIT rows carry the lr in the source.
# Values typed from the papers in /work/shared/papers/ (percent / 100).
_WILD_FRACTIONS = (0.1, 0.2, 0.4)
_WILD_II = {
    # scheme: (original (test, wm), {column: [(test, wm) at 10%, 20%, 40%]})
    "content": ((0.9808, 0.9986), {
        "refit lr 0.001": [(0.9779, 0.2633), (0.9881, 0.1771), (0.9887, 0.0778)],
        "refit lr 0.003": [(0.9835, 0.0655), (0.9848, 0.0546), (0.9867, 0.0317)],
        "refit lr 0.005": [(0.9768, 0.0327), (0.9797, 0.0263), (0.9834, 0.0031)],
        "wild_ce": [(0.9764, 0.0111), (0.9774, 0.0082), (0.9779, 0.0053)],
        "wild_js": [(0.9757, 0.0092), (0.9768, 0.0086), (0.9775, 0.0092)],
        "wild_dn": [(0.9703, 0.0062), (0.9717, 0.0116), (0.9724, 0.0043)],
    }),
    "noise": ((0.9764, 1.0), {
        "refit lr 0.001": [(0.9873, 0.9911), (0.9893, 0.9898), (0.9903, 0.7685)],
        "refit lr 0.003": [(0.9814, 0.9835), (0.9862, 0.9674), (0.9873, 0.7033)],
        "refit lr 0.005": [(0.9786, 0.5683), (0.9839, 0.4852), (0.9869, 0.4601)],
        "wild_ce": [(0.9775, 0.0417), (0.9807, 0.0082), (0.9814, 0.0232)],
        "wild_js": [(0.9782, 0.0626), (0.9802, 0.0343), (0.9813, 0.0492)],
        "wild_dn": [(0.9744, 0.0065), (0.9768, 0.0013), (0.9773, 0.0017)],
    }),
    "unrelated": ((0.9853, 0.99), {
        "refit lr 0.001": [(0.9903, 0.89), (0.9905, 0.86), (0.9922, 0.78)],
        "refit lr 0.003": [(0.9892, 0.84), (0.9889, 0.79), (0.9894, 0.55)],
        "refit lr 0.005": [(0.9877, 0.69), (0.9868, 0.58), (0.9885, 0.35)],
        "wild_ce": [(0.9737, 0.11), (0.9781, 0.10), (0.9795, 0.09)],
        "wild_js": [(0.9717, 0.15), (0.9760, 0.07), (0.9782, 0.06)],
        "wild_dn": [(0.9733, 0.09), (0.9756, 0.14), (0.9771, 0.11)],
    }),
}
# Laundering Table 2, MNIST rows: "Ours" (0.6% of the data), Zhang et al.'s 90% pruning (16.6%),
# the watermarked originals and the vanilla-model threshold.
_LAUNDERING_2 = {
    "content": {"laundering": (0.9834, 0.0001), "prune": (0.9703, 0.9995), "watermarked": (0.9990, 1.0),
                "threshold": (None, 0.015)},
    "noise": {"laundering": (0.9745, 0.0007), "prune": (0.9519, 0.9955), "watermarked": (0.9986, 0.9999),
              "threshold": (None, 0.06)},
    "unrelated": {"laundering": (0.9833, 0.15), "prune": (0.9355, 0.999), "watermarked": (0.9992, 0.9971),
                  "threshold": (None, 0.20)},
}


def paper_references() -> dict[tuple[str, str], list[Reference]]:
    """(our scheme, model or method) -> the papers' MNIST numbers, each with the paper row it comes from.

    Keyed by the scheme of our protocol for the paper's row (WILD's "content"
    is our ``square``); :meth:`PaperRow.matches` tells whether an experiment's
    other params match too.
    """
    table: dict[tuple[str, str], list[Reference]] = {}
    for name, ((test, wm), columns) in _WILD_II.items():
        row = PAPER_ROWS[WILD, name]
        table.setdefault((row.scheme, "watermarked"), []).append(Reference(test, wm, 1.0, WILD, row))
        for column, values in columns.items():
            method, _, lr = column.partition(" ")
            source = f"{WILD}, {lr}" if lr else WILD
            for fraction, (t, w) in zip(_WILD_FRACTIONS, values, strict=True):
                table.setdefault((row.scheme, method), []).append(Reference(t, w, fraction, source, row))
    for name, models in _LAUNDERING_2.items():
        row = PAPER_ROWS[LAUNDERING, name]
        for model, (t, w) in models.items():
            fraction = {"laundering": 0.006, "prune": 0.166}.get(model, 1.0)
            table.setdefault((row.scheme, model), []).append(Reference(t, w, fraction, LAUNDERING, row))
    return table



def queue_commands(
    schemes: Sequence[str],
    fractions: Sequence[float],
    extra: Sequence[str] = (),
    prefix: str = "sweep",
    seeds: Sequence[int] = (),
    target: str = "",
) -> list[list[str]]:
    """One ``dvc exp run --queue`` per (scheme, fraction, seed); every method runs inside each experiment.

    The methods are the ``remove@<method>`` stages of one experiment, so the
    watermarked and clean models are trained once per cell, not once per
    method. ``extra`` are more ``key=value`` settings (e.g. ``removal.refit.lr=0.005``);
    ``seeds`` empty keeps params.yaml's seed (and names without ``-s<seed>``);
    ``target`` runs each experiment up to that stage only (e.g. ``robustness``: no plots, no ONNX).
    """
    commands = []
    for scheme, fraction, seed in itertools.product(schemes, fractions, seeds or [None]):
        name = f"{prefix}-{scheme}-{fraction:g}".replace(".", "p") + ("" if seed is None else f"-s{seed}")
        settings = [f"watermark.scheme={scheme}", f"data.adversary_fraction={fraction:g}",
                    *([] if seed is None else [f"seed={seed}"]), *extra]
        commands.append(["dvc", "exp", "run", "--queue", "--name", name, *_flags(settings),
                         *([target] if target else [])])
    return commands


def collect_attempts(exp_show: Sequence[Mapping[str, Any]], prefix: str | None = None) -> dict[float, list[Any]]:
    """Per adversary fraction, every removal of every experiment as a :class:`wmbench.robustness.Attempt`.

    An attempt's ``setting`` names the params that differ between the
    experiments (besides scheme, fraction and seed) and bear on its method:
    ``removal.<method>.*``, ``beta`` for WILD, and any key outside
    ``removal``; so a sweep over ``beta`` gives WILD one attempt per value and
    fine-tuning one in all (its identical runs, restored from DVC's run cache,
    are kept once). Experiments without ``metrics/robustness.json`` are skipped.
    """
    from wmbench.robustness import Attempt

    found = []
    for name, data in _experiments(exp_show):
        if prefix is not None and not (name or "").startswith(prefix):
            continue
        metrics = data.get("metrics", {}).get(ROBUSTNESS, {}).get("data")
        if metrics:
            found.append((dict(_dotted(data.get("params", {}).get("params.yaml", {}).get("data", {}))), metrics))
    keys = sorted({key for params, _ in found for key in params})
    varied = [key for key in keys if key not in CELL_KEYS and len({repr(p.get(key)) for p, _ in found}) > 1]
    attempts: dict[float, dict[tuple, Attempt]] = {}
    for params, metrics in found:
        fraction = float(params.get("data.adversary_fraction", float("nan")))
        for method, figures in sorted(metrics.get("attempts", {}).items()):
            setting = ",".join(f"{key}={params.get(key)}" for key in varied if _bears_on(key, method))
            attempt = Attempt(scheme=str(params.get("watermark.scheme", "?")), method=method, setting=setting,
                              seed=int(params.get("seed", 0)), estimated_drop=float(figures["holdout_acc_drop"]),
                              proxy_wm_acc=float(figures["proxy_wm_acc"]),
                              test_acc_drop=float(figures["test_acc_drop"]), wm_acc=float(figures["wm_acc"]),
                              threshold=float(metrics["threshold"]))
            attempts.setdefault(fraction, {}).setdefault((attempt.scheme, method, setting, attempt.seed), attempt)
    return {fraction: list(kept.values()) for fraction, kept in sorted(attempts.items())}


def _bears_on(key: str, method: str) -> bool:
    """Whether param ``key`` can change what removal ``method`` does."""
    if key.startswith("removal."):
        return key.startswith(f"removal.{method}.")
    if key == "beta":
        return method in WILD_METHODS
    return True


def _flags(settings: Iterable[str]) -> list[str]:
    return [part for setting in settings for part in ("-S", setting)]


@dataclass(frozen=True)
class Row:
    """One model in one experiment of the sweep."""

    experiment: str
    scheme: str
    fraction: float
    model: str
    test_acc: float | None
    wm_acc: float
    verdicts: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)  # the experiment's params.yaml, dotted keys


def collect_rows(
    exp_show: Sequence[Mapping[str, Any]], prefix: str | None = None, methods: Sequence[str] = ()
) -> list[Row]:
    """The rows of every experiment in ``dvc exp show --json`` output (optionally names starting ``prefix``).

    Per experiment: the clean-model threshold, the watermarked model and
    every removal method in ``metrics/summary.json`` (only ``methods`` when
    given); the clean models themselves are summarised by the threshold.
    Failed or empty experiments are skipped.
    """
    rows = []
    for name, data in _experiments(exp_show):
        if prefix is not None and not (name or "").startswith(prefix):
            continue
        params = data.get("params", {}).get("params.yaml", {}).get("data", {})
        summary = data.get("metrics", {}).get(SUMMARY, {}).get("data")
        if not summary:
            continue
        scheme = params.get("watermark", {}).get("scheme", "?")
        fraction = float(params.get("data", {}).get("adversary_fraction", float("nan")))
        dotted = dict(_dotted(params))
        rows.append(Row(name, scheme, fraction, "threshold", None, summary["threshold"], {}, dotted))
        for model, metrics in summary.items():
            if not isinstance(metrics, dict) or model.startswith("vanilla"):
                continue
            if methods and model != "watermarked" and model not in methods:
                continue
            verdicts = {k: v for k, v in metrics.items() if k not in ("test_acc", "wm_acc", "test_acc_drop")}
            rows.append(Row(name, scheme, fraction, model, metrics["test_acc"], metrics["wm_acc"], verdicts, dotted))
    return rows


def _dotted(params: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", 1)``: params as ``dvc exp run -S`` names them."""
    for key, value in params.items():
        if isinstance(value, Mapping):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _experiments(exp_show: Sequence[Mapping[str, Any]]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(name, data) of every experiment under every baseline commit, newest revision of each."""
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            revs = experiment.get("revs") or []
            if revs and revs[0].get("data") and not revs[0].get("error"):
                yield experiment.get("name") or revs[0].get("name") or revs[0]["rev"][:7], revs[0]["data"]


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _closest(references: list[Reference], fraction: float) -> list[Reference]:
    """The references at the fraction nearest ``fraction`` (all REFIT lrs at that fraction)."""
    if not references:
        return []
    best = min(abs(r.fraction - fraction) for r in references)
    return [r for r in references if abs(r.fraction - fraction) == best]


def markdown_table(rows: Sequence[Row], references: Mapping[tuple[str, str], list[Reference]] | None = None) -> str:
    """A markdown table of ``rows`` with the papers' MNIST numbers for the same protocol and method.

    A paper's number is shown beside a row only when the experiment's params
    give that paper row's protocol (:data:`PAPER_ROWS`; WILD's "content" is our
    ``square`` at the bottom right, not our ``content``), named in the cell, at
    the paper's data fraction closest to ours (named when it differs); REFIT
    shows each lr. A legend after the table writes the whole mapping down.
    """
    references = paper_references() if references is None else references
    header = ("| scheme | adversary data | model | test acc | wm retention | removed | useful | p-value "
              "| ownership verified | paper row: test acc / retention |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in sorted(rows, key=lambda r: (r.scheme, r.fraction, _order(r.model), r.model)):
        paper = paper_cell(references, row.scheme, row.model, row.fraction, row.params)
        verdict = row.verdicts
        cells = [
            row.scheme, f"{100 * row.fraction:g}%", row.model, _percent(row.test_acc) or "-", _percent(row.wm_acc),
            _flag(verdict.get("removed")), _flag(verdict.get("useful")),
            f"{verdict['p_value']:.2g}" if "p_value" in verdict else "",
            _flag(verdict.get("ownership_verified")), "<br>".join(paper),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + mapping_table()


def paper_cell(references: Mapping[tuple[str, str], list[Reference]], scheme: str, model: str, fraction: float,
               params: Mapping[str, Any]) -> list[str]:
    """The papers' MNIST numbers for one of our rows ("test / retention (source)"), only from the paper rows
    whose protocol ``params`` (dotted) run, at the paper's fraction closest to ours; the other paper rows of the
    same name are listed with the params that would run them."""
    candidates = references.get((scheme, model), [])
    matching = [ref for ref in candidates if ref.row is None or ref.row.matches(params)]
    paper = []
    for ref in _closest(matching, fraction):
        note = [ref.source if ref.row is None else f'{ref.source} "{ref.row.name}"']
        note += [f"{100 * ref.fraction:g}% data"] if ref.fraction not in (1.0, fraction) else []
        paper.append(f"{_percent(ref.test_acc) or '-'} / {_percent(ref.wm_acc)} ({', '.join(note)})")
    others = {ref.row.label(): ref.row for ref in candidates if ref not in matching and ref.row is not None}
    return paper + [f"not {label}: {other.how()}" for label, other in sorted(others.items())]


def dotted(params: Mapping[str, Any]) -> dict[str, Any]:
    """A nested params mapping with ``dvc exp run -S`` keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    return dict(_dotted(params))


def mapping_table() -> str:
    """Markdown: each paper row, the protocol it used, and the params that run it here."""
    lines = ["| paper row | what the paper used | our params |", "|---|---|---|"]
    for row in PAPER_ROWS.values():
        lines.append(f"| {row.label()} | {row.description} | `{row.how()}` |")
    return "\n".join(lines) + "\n"


def _order(model: str) -> int:
    return {"watermarked": 0, "threshold": 1, "scratch": 3}.get(model, 2)


def _flag(value: Any) -> str:
    return "" if value is None else ("yes" if value else "no")
