"""CI: the pipeline's DVC contract on a reproduced default pipeline (run in the repository root).

    python .ci/check_contract.py same-hashes OLD_LOCK  # outputs hash as in OLD_LOCK, metrics' times aside
    python .ci/check_contract.py refusals              # each bad input: one-line error, not 0, nothing lost
    python .ci/check_contract.py own-files             # a changed own checkpoint re-runs check and embed

Each prints what it checked and exits 1 on the first broken promise. ``refusals``
and ``own-files`` put params.yaml and owner/ back as they found them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

OUTPUTS = ("data", "models", "metrics", "plots", "exports", "artifacts", "settings")
REFUSALS = [  # (dvc exp run -S arguments, what the error must name)
    (["train.epochs=ten"], "train.epochs='ten'"),
    (["beta=-1"], "beta=-1"),
    (["data.adversary_fraction=0"], "data.adversary_fraction=0"),
    (["+betta=10"], "unknown key 'betta'"),
    (["model.checkpoint=owner/truncated.safetensors"], "model.checkpoint='owner/truncated.safetensors'"),
    (["watermark.trigger_set=owner/triggers32.npz"], "this dataset needs 28x28 images"),
]


def fail(message: str) -> None:
    print(f"contract check: FAILED: {message}")
    sys.exit(1)


def dvc(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def hashes() -> dict[str, str]:
    """Path -> SHA-256 of every file a stage writes."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in OUTPUTS for path in sorted(Path(folder).rglob("*")) if path.is_file()}


def lock_outputs(path: str | Path) -> dict[str, str]:
    """Output path -> md5 recorded in a dvc.lock."""
    stages = yaml.safe_load(Path(path).read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def same_hashes(old_lock: str) -> None:
    """Two repros of the same inputs give the same outputs; only metrics (their time_s) may differ."""
    old, new = lock_outputs(old_lock), lock_outputs("dvc.lock")
    changed = sorted(path for path in old.keys() | new.keys() if old.get(path) != new.get(path))
    unexplained = [path for path in changed if not path.startswith("metrics/")]
    if unexplained:
        fail(f"a forced repro changed outputs other than metrics: {unexplained}")
    print(f"contract check: {len(new) - len(changed)} of {len(new)} outputs byte-identical after dvc repro -f; "
          f"the rest are metrics whose time_s changed: {', '.join(changed) or 'none'}")


def own_files() -> dict[str, Path]:
    """Bad own files in owner/: a truncated checkpoint and a trigger set of the wrong image size."""
    from safetensors.torch import save_file

    from wmbench.checkpoint import load_checkpoint

    files = {"truncated": Path("owner/truncated.safetensors"), "triggers32": Path("owner/triggers32.npz")}
    save_file(load_checkpoint("models/watermarked.pt").state_dict, str(files["truncated"]))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:2000])
    np.savez(files["triggers32"], images=np.zeros((5, 32, 32), np.uint8), labels=np.zeros(5, np.int64))
    return files


def refusals() -> None:
    """Every bad input of issue 16: a one-line error naming it, exit not 0, every output as it was, status stale."""
    params = Path("params.yaml").read_bytes()
    files = own_files()
    before = hashes()
    try:
        for overrides, message in REFUSALS:
            code, out = dvc("exp", "run", *[arg for value in overrides for arg in ("-S", value)])
            errors = [line for line in out.splitlines() if line.startswith("error: ")]
            if code == 0 or len(errors) != 1 or message not in errors[0]:
                fail(f"-S {' '.join(overrides)}: expected one error line naming {message!r}, got (exit {code}):\n{out}")
            if (lost := sorted(path for path, digest in before.items() if hashes().get(path) != digest)):
                fail(f"-S {' '.join(overrides)} lost or changed outputs: {lost}")
            status = dvc("status")[1]
            if "check:" not in status:
                fail(f"-S {' '.join(overrides)}: dvc status does not report check as stale:\n{status}")
            print(f"contract check: -S {' '.join(overrides)}: exit {code}, {errors[0]!r}; "
                  f"all {len(before)} output files unchanged; dvc status: check stale")
            Path("params.yaml").write_bytes(params)
    finally:
        Path("params.yaml").write_bytes(params)
        for path in files.values():
            path.unlink(missing_ok=True)


def own_checkpoint_change() -> None:
    """Replacing the file model.checkpoint names (same path) re-runs check and embed; putting it all back restores."""
    from safetensors.torch import save_file

    from wmbench.checkpoint import load_checkpoint

    params = Path("params.yaml").read_bytes()
    own = Path("owner/model.safetensors")
    edited = yaml.safe_load(params)
    edited["model"]["checkpoint"] = str(own)
    try:
        save_file(load_checkpoint("models/watermarked.pt").state_dict, str(own))
        Path("params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        code, out = dvc("repro", "embed")
        status = dvc("status", "--with-deps", "embed")[1]
        if code != 0 or "up to date" not in status:
            fail(f"importing the owner's checkpoint failed or left embed stale:\n{out}\n{status}")
        imported = json.loads(Path("metrics/embed.json").read_text())

        save_file(load_checkpoint("models/vanilla/seed1.pt").state_dict, str(own))  # same path, other weights
        status = dvc("status", "--with-deps", "embed")[1]
        if "check:" not in status or "owner" not in status:
            fail(f"dvc status does not see the changed owner/model.safetensors:\n{status}")
        code, out = dvc("repro", "embed")
        rescored = json.loads(Path("metrics/embed.json").read_text())
        if code != 0 or "Running stage 'embed'" not in out or rescored["wm_acc"] == imported["wm_acc"]:
            fail(f"the changed checkpoint did not re-run embed (exit {code}):\n{out}")
        print(f"contract check: replacing owner/model.safetensors made check stale; dvc repro embed re-ran embed: "
              f"wm_acc {imported['wm_acc']} -> {rescored['wm_acc']}")
    finally:
        Path("params.yaml").write_bytes(params)
        own.unlink(missing_ok=True)
    code, out = dvc("repro")
    status = dvc("status", "dvc.yaml")[1]
    if code != 0 or "Data and pipelines are up to date" not in status:
        fail(f"putting params.yaml back did not restore the pipeline:\n{out}\n{status}")
    how = "from the run cache" if "is cached" in out else "by re-running it"
    print(f"contract check: params.yaml put back: dvc repro restored embed {how}; dvc status clean")


if __name__ == "__main__":
    commands = {"same-hashes": same_hashes, "refusals": refusals, "own-files": own_checkpoint_change}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[sys.argv[1]](*sys.argv[2:])
