"""The sweep's grid commands and its table builder on a small fake ``dvc exp show --json``."""

from __future__ import annotations

from wmbench.sweep import collect_attempts, collect_rows, markdown_table, paper_references, queue_commands


def experiment(name, scheme, fraction, summary, noise_draw="fixed"):
    data = {
        "params": {"params.yaml": {"data": {
            "watermark": {"scheme": scheme, "noise": {"draw": noise_draw}, "square": {"position": "bottom_right"},
                          "unrelated": {"verification": "fresh"}},
            "data": {"adversary_fraction": fraction},
        }}},
        "metrics": {"metrics/summary.json": {"data": summary}},
    }
    return {"revs": [{"rev": "abc1234def", "name": name, "data": data, "error": None}], "name": name}


def summary(wm_removed):
    return {
        "threshold": 0.05, "alpha": 0.05, "time_s": 3.0,
        "watermarked": {"test_acc": 0.97, "wm_acc": 1.0, "removed": False, "p_value": 1e-40,
                        "ownership_verified": True, "useful": True},
        "vanilla_seed1": {"test_acc": 0.96, "wm_acc": 0.01, "removed": True},
        "wild_ce": {"test_acc": 0.955, "wm_acc": wm_removed, "removed": wm_removed <= 0.05, "p_value": 0.4,
                    "ownership_verified": False, "useful": True},
        "scratch": {"test_acc": 0.90, "wm_acc": 0.02, "removed": True, "p_value": 0.9,
                    "ownership_verified": False, "useful": False},
    }


FAKE_EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": {"metrics": {}}, "experiments": None},
    {
        "rev": "0123456789", "name": "main", "data": {},
        "experiments": [
            experiment("sweep-content-0p1", "content", 0.1, summary(0.02)),
            experiment("sweep-noise-0p2", "noise", 0.2, summary(0.30)),
            experiment("sweep-square-0p1", "square", 0.1, summary(0.04)),
            experiment("sweep-noisy-0p1", "noise", 0.1, summary(0.5), noise_draw="per_image"),
            experiment("other-run", "content", 0.1, summary(0.5)),
            {"revs": [{"rev": "deadbeef", "name": "sweep-failed", "data": {}, "error": {"msg": "boom"}}]},
        ],
    },
]


def test_collect_rows_reads_sweep_experiments_only():
    rows = collect_rows(FAKE_EXP_SHOW, prefix="sweep")
    assert {r.experiment for r in rows} == {"sweep-content-0p1", "sweep-noise-0p2", "sweep-square-0p1",
                                            "sweep-noisy-0p1"}
    models = sorted(r.model for r in rows if r.experiment == "sweep-noise-0p2")
    assert models == ["scratch", "threshold", "watermarked", "wild_ce"]  # clean models only via the threshold
    (ce,) = [r for r in rows if r.model == "wild_ce" and r.experiment == "sweep-noise-0p2"]
    assert (ce.fraction, ce.wm_acc, ce.verdicts["removed"]) == (0.2, 0.30, False)


def test_markdown_table_puts_paper_numbers_beside_ours():
    table = markdown_table(collect_rows(FAKE_EXP_SHOW, prefix="sweep"))
    lines = table.splitlines()
    assert lines[0].startswith("| scheme | adversary data | model |")
    assert set(lines[1]) == {"|", "-"} and lines[1].count("|") == lines[0].count("|")
    assert lines.index("") == 2 + 4 * 4  # the results, then the legend of paper rows
    content_ce = next(line for line in lines if line.startswith("| content | 10% | wild_ce |"))
    assert "95.50% | 2.00% | yes | yes | 0.4 | no |" in content_ce
    assert "WILD" not in content_ce  # WILD's "content" row is a BadNets square, not Zhang's word
    square_ce = next(line for line in lines if line.startswith("| square | 10% | wild_ce |"))
    assert '97.64% / 1.11% (WILD Tab. II "content")' in square_ce  # WILD Table II, content, 10%, CE
    noise_wm = next(line for line in lines if line.startswith("| noise | 20% | watermarked |"))
    assert '97.64% / 100.00% (WILD Tab. II "noise")' in noise_wm
    assert '99.86% / 99.99% (Laundering Tab. 2 "noise")' in noise_wm
    noisy_ce = next(line for line in lines if line.startswith("| noise | 10% | wild_ce |"))
    assert "%" not in noisy_ce.split("|")[-2]  # per-image noise is neither paper's protocol: no number
    assert 'not WILD Tab. II "noise": -S watermark.scheme=noise -S watermark.noise.draw=fixed' in noisy_ce
    threshold = next(line for line in lines if line.startswith("| content | 10% | threshold |"))
    assert '- / 1.50% (Laundering Tab. 2 "content")' in threshold
    legend = lines[lines.index("") + 1:]
    assert any(line.startswith('| WILD Tab. II "content" | a square at the bottom-right') and
               "`-S watermark.scheme=square -S watermark.square.position=bottom_right`" in line for line in legend)
    scratch = next(i for i, line in enumerate(lines) if line.startswith("| content | 10% | scratch"))
    assert lines.index(content_ce) < scratch


def test_paper_references_hold_the_typed_tables():
    refs = paper_references()
    assert {r.row.name for r in refs[("square", "wild_ce")]} == {"content"}  # WILD's content row is the square
    assert ("content", "wild_ce") not in refs
    refit = [r for r in refs[("unrelated", "refit")] if r.fraction == 0.4]
    assert [(r.test_acc, r.wm_acc) for r in refit] == [(0.9922, 0.78), (0.9894, 0.55), (0.9885, 0.35)]
    (laundering,) = refs[("noise", "laundering")]
    assert (laundering.wm_acc, laundering.fraction) == (0.0007, 0.006)


def test_queue_commands_cover_the_grid():
    commands = queue_commands(["content", "noise"], [0.1, 0.4], ["beta=10"])
    assert len(commands) == 4
    first = commands[0]
    assert first[:6] == ["dvc", "exp", "run", "--queue", "--name", "sweep-content-0p1"]
    assert first[6:] == ["-S", "watermark.scheme=content", "-S", "data.adversary_fraction=0.1",
                         "-S", "beta=10"]
    assert {c[5] for c in commands} == {"sweep-content-0p1", "sweep-content-0p4", "sweep-noise-0p1", "sweep-noise-0p4"}


def test_table_only_on_no_experiments_says_why(monkeypatch, tmp_path, capsys):
    from scripts import sweep

    monkeypatch.setattr(sweep, "dvc", lambda *args, capture=False: "[]")
    assert sweep.main(["--table-only", "--out", str(tmp_path / "t.md")]) == 1
    assert "no experiment named sweep* with metrics/summary.json or metrics/robustness.json" in capsys.readouterr().err


def robust_experiment(name, seed, beta, attempts, threshold=0.05):
    """An experiment with the robustness stage's metrics: attempts = {method: (held-out drop, proxy, drop, wm)}."""
    data = {"params": {"params.yaml": {"data": {"seed": seed, "beta": beta, "watermark": {"scheme": "square"},
                                                 "data": {"adversary_fraction": 0.1},
                                                 "removal": {"finetune": {"lr": 0.0004}}}}},
            "metrics": {"metrics/robustness.json": {"data": {"threshold": threshold, "attempts": {
                method: {"holdout_acc_drop": h, "proxy_wm_acc": p, "test_acc_drop": d, "wm_acc": w}
                for method, (h, p, d, w) in attempts.items()}}}}}
    return {"revs": [{"rev": "0" * 10, "name": name, "data": data, "error": None}], "name": name}


def test_collect_attempts_labels_the_varied_setting_and_keeps_shared_runs_once():
    wild = {1.0: (0.004, 0.1, 0.005, 0.03), 10.0: (0.015, 0.01, 0.05, 0.003)}  # beta 10 hides a 5-point loss
    show = [{"rev": "main", "experiments": [
        robust_experiment(f"sweep-square-0p1-s{seed}-beta{beta:g}", seed, beta,
                          {"finetune": (0.0, 0.9, 0.002, 1.0), "wild_js": wild[beta]})
        for seed in (0, 1) for beta in (1.0, 10.0)]}]
    (fraction, found), = collect_attempts(show, prefix="sweep").items()
    assert fraction == 0.1
    labels = sorted({(a.method, a.setting) for a in found})
    assert labels == [("finetune", ""), ("wild_js", "beta=1.0"), ("wild_js", "beta=10.0")]
    assert len(found) == 2 + 4  # finetune once per seed, wild_js per seed and beta
    from wmbench.robustness import verdicts

    by_budget = {v.budget: v for v in verdicts(found)}
    assert by_budget[0.005].method == "wild_js@beta=1.0" and by_budget[0.005].removed
    assert by_budget[0.02].picks[0].setting == "beta=10.0"
    assert not by_budget[0.02].removed  # its pick lost 5 points on the test set: over the budget


def test_queue_commands_with_seeds_and_varied_settings():
    from scripts.sweep import setting_combinations, suffix

    combos = setting_combinations(["beta=1", "beta=10", "removal.wild_js.epochs=4"])
    assert combos == [["beta=1", "removal.wild_js.epochs=4"], ["beta=10", "removal.wild_js.epochs=4"]]
    assert suffix(combos[1]) == "-beta10-epochs4"
    commands = queue_commands(["square"], [0.1], combos[0], "sweep" + suffix(combos[0]), seeds=[0, 2])
    assert [c[5] for c in commands] == ["sweep-beta1-epochs4-square-0p1-s0", "sweep-beta1-epochs4-square-0p1-s2"]
    assert commands[1][6:10] == ["-S", "watermark.scheme=square", "-S", "data.adversary_fraction=0.1"]
    assert "seed=2" in commands[1] and commands[1][-1] == "removal.wild_js.epochs=4"
    assert queue_commands(["square"], [0.1], target="robustness")[0][-1] == "robustness"


def test_queue_status_is_read_for_progress():
    from scripts.sweep import pending

    status = """Task     Name                 Created    Status
2e35abb  cell-content-0p1-s0  02:47 PM   Running
8f1c2d0  cell-content-0p1-s1  02:47 PM   Queued
11aa22b  old-run              01:10 PM   Success

Worker status: 1 active, 0 idle
"""
    assert pending(status) == (["cell-content-0p1-s0"], 1)
    assert pending("Task  Name  Created  Status\n") == ([], 0)
