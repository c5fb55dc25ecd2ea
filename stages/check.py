"""Stage ``check``: every input checked before DVC touches any output.

DVC deletes a stage's outputs before running it, so this stage runs first and
every other stage depends on what it writes: a refused value (a typo'd key, a
value out of range, a corrupt or misshapen checkpoint or trigger set) stops
``dvc repro`` with the earlier results all still in place. It depends on the
whole of params.yaml and on the owner's folder, so changing the owner's
checkpoint or trigger set re-runs the stages that read them
(``wmbench.inputs.check_inputs`` says what is checked).
"""

from __future__ import annotations

from collections.abc import Sequence

from wmbench.inputs import check_inputs, write_records
from wmbench.stage import Timer, run_stage, stage_parser, writing_outputs


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "check")
    parser.add_argument("--owner", default="owner",
                        help="folder for your own checkpoint and trigger set, a DVC dependency")
    parser.add_argument("--out", default="data/checked", help="folder for the records later stages depend on")
    args = parser.parse_args(argv)
    timer = Timer()

    checked = check_inputs(args.params, owner=args.owner)
    with writing_outputs():
        write_records(args.out, checked.records)
    byo = [key for key, record in (("model.checkpoint", checked.records["checkpoint.json"]),
                                   ("watermark.trigger_set", checked.records["trigger_set.json"])) if record["path"]]
    print(f"check: {args.params} valid; own files: {', '.join(byo) or 'none'} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
