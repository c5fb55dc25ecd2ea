"""``params.yaml`` as validated dataclasses: every key checked before any work starts.

Defaults live here, once; ``params.yaml`` repeats them so that ``dvc exp run -S``
can set every key. An unknown key, a wrong type or an out-of-range value raises
:class:`ParamsError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A bad value in params.yaml; the message names the key and the fix."""


@dataclass
class DataParams:
    """Which dataset, where it lives, and the adversary's share of it."""

    name: str = "digits"  # digits | mnist | fashion_mnist | cifar10
    root: str = "data/raw"  # folder with the dataset's files (unused by digits)
    download: bool = False  # fetch mnist / fashion_mnist / cifar10 if missing
    adversary_fraction: float = 0.1  # share of the training split the adversary holds, (0, 1]
    adversary_holdout: float = 0.2  # share of the adversary's subset it keeps aside to judge settings, [0, 0.5]
    # share of the training split the owner never trains on; the adversary's held-out slice comes from it (images
    # of its own, unseen by the owner's model); 0: the slice is part of its share of the owner's data
    holdout_pool: float = 0.0

    def __post_init__(self) -> None:
        from wmbench.data import DATASETS

        _check_name("data.name", self.name, DATASETS)
        if not 0 < self.adversary_fraction <= 1:
            raise ParamsError(
                f"data.adversary_fraction={self.adversary_fraction} is outside (0, 1]; "
                "use e.g. 0.1 for 10% of the training split"
            )
        if not 0 <= self.adversary_holdout <= 0.5:
            raise ParamsError(
                f"data.adversary_holdout={self.adversary_holdout} is outside [0, 0.5]; "
                "use e.g. 0.1 to keep a tenth of the adversary's images aside, or 0 for none"
            )
        if not 0 <= self.holdout_pool < 0.5:
            raise ParamsError(
                f"data.holdout_pool={self.holdout_pool} is outside [0, 0.5); use e.g. 0.02 to keep 2% of the "
                "training split from the owner for the adversary's held-out slice, or 0 for none"
            )
        if self.holdout_pool > 0 and self.adversary_holdout == 0:
            raise ParamsError(
                f"data.holdout_pool={self.holdout_pool} reserves images for a held-out slice, but "
                "data.adversary_holdout is 0 (no slice); set data.adversary_holdout > 0 or data.holdout_pool to 0"
            )


@dataclass
class WatermarkParams:
    """The owner's watermark: scheme, label, trigger-set size, how it is trained in."""

    scheme: str = "content"  # content | noise | unrelated | abstract | square
    target: int = 0  # label the triggers are trained to (unused by abstract)
    size: int = 100  # images in the verification trigger set
    poison_fraction: float = 0.1  # watermarked samples added, as a share of the owner's set
    embedding: Literal["scratch", "pretrained"] = "scratch"  # Adi et al. FS or PT
    trigger_set: str = ""  # the owner's own trigger set (.npz or folder); "" = build from `scheme`
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-scheme options

    def __post_init__(self) -> None:
        from wmbench.watermarks import WATERMARKS

        _check_name("watermark.scheme", self.scheme, WATERMARKS)
        if self.size < 1:
            raise ParamsError(f"watermark.size={self.size} must be at least 1")
        if not 0 < self.poison_fraction <= 1:
            raise ParamsError(f"watermark.poison_fraction={self.poison_fraction} is outside (0, 1]")
        _check_path("watermark.trigger_set", self.trigger_set)
        for scheme, options in self.options.items():
            cls = WATERMARKS.get(scheme)
            valid, hints = cls.option_names(), typing.get_type_hints(cls)
            for key, value in options.items():
                if key not in valid:
                    raise ParamsError(_unknown(f"watermark.{scheme}.{key}", key, valid))
                options[key] = _coerce(hints[key], value, f"watermark.{scheme}.{key}")

    @property
    def scheme_options(self) -> dict[str, Any]:
        """Options of the chosen scheme."""
        return dict(self.options.get(self.scheme, {}))


@dataclass
class ModelParams:
    """The architecture, by name."""

    arch: str = "lenet"  # lenet | zhang_mnist | zhang_cifar | vgg16 | resnet18
    checkpoint: str = ""  # the owner's own weights for `arch` (.pt state dict or .safetensors); "" = train

    def __post_init__(self) -> None:
        from wmbench.models import ARCHS

        _check_name("model.arch", self.arch, ARCHS)
        _check_path("model.checkpoint", self.checkpoint)


# the learning-rate schedules of wmbench.training.make_scheduler, for every params block that trains
LrSchedule = Literal["constant", "cosine"]


@dataclass
class TrainParams:
    """Embedding (and clean) training: WILD Sec. IV-A trains with RMSprop at lr 0.004."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    lr: float = 0.004  # initial lr
    lr_schedule: LrSchedule = "cosine"  # cosine: anneal to 0 over the run
    momentum: float = 0.0  # sgd and rmsprop only
    weight_decay: float = 0.0
    pretrain_epochs: int = 10  # clean epochs before embedding when watermark.embedding=pretrained

    def __post_init__(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        if self.momentum < 0 or self.weight_decay < 0 or self.pretrain_epochs < 0:
            raise ParamsError("train.momentum, train.weight_decay and train.pretrain_epochs must be >= 0")


CLEAN_SEED_STRIDE = 1000  # run seed s trains its clean models with seeds 1000 s + 1 .. (wmbench.seeding.clean_seeds)


@dataclass
class VanillaParams:
    """Clean models that calibrate the ownership threshold (Aiken et al., Sec. 7.1)."""

    seeds: int = 3  # how many clean models (training seeds 1000 seed + 1 .. + N: wmbench.seeding.clean_seeds)

    def __post_init__(self) -> None:
        _positive("vanilla.seeds", self.seeds)
        if self.seeds >= CLEAN_SEED_STRIDE:
            raise ParamsError(f"vanilla.seeds={self.seeds}: at most {CLEAN_SEED_STRIDE - 1} clean models (their seeds "
                              f"are {CLEAN_SEED_STRIDE} seed + 1 ..); 3 to 10 calibrate a threshold")


@dataclass
class EvaluateParams:
    """The ownership test in the ``evaluate`` stage (see ``wmbench.evaluate.ownership_test``)."""

    alpha: float = 0.05  # significance level: ownership_verified when p_value < alpha, in (0, 1)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ParamsError(f"evaluate.alpha={self.alpha} is outside (0, 1); use e.g. 0.05")


@dataclass
class ExportParams:
    """ONNX export and its check against PyTorch (``export`` stage)."""

    check_images: int = 256  # test images run through both PyTorch and the ONNX reference evaluator
    tolerance: float = 1e-3  # largest allowed absolute difference of any logit (float32 round-off is ~1e-5)
    opset: int = 18  # ONNX opset version

    def __post_init__(self) -> None:
        _positive("export.check_images", self.check_images)
        _positive("export.tolerance", self.tolerance)
        if self.opset < 18:
            raise ParamsError(f"export.opset={self.opset}; the dynamo exporter needs opset 18 or newer")


PROXIES = ("trigger", "region", "wide")  # the adversary's retention estimates (wmbench.proxy), cheapest first


@dataclass
class RobustnessParams:
    """The owner's question (``robustness`` stage): removed within how many points of test accuracy?"""

    budgets: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.02])  # accuracy losses, as fractions
    proxy: Literal["region", "trigger", "wide"] = "region"  # the adversary's retention estimate (one of PROXIES)
    proxy_area: float = 2.0  # region proxy: the region's pixels, in multiples of the trigger's support
    proxy_steps: int = 150  # region proxy: Adam steps of 64 adversary images re-optimising the pattern
    proxy_multiple: float = 2.0  # wide proxy: triggers' L1 and region pixels (x proxy_area), per unit of NC's norm
    proxy_search_steps: int = 400  # wide proxy: Adam steps of 64 adversary images per search of the wide trigger
    proxy_searches: int = 4  # wide proxy: searches whose mean mask places the region
    # proxies measured beside `proxy`, for comparison only (each removal's <name>_wm_acc); `wide` costs the most
    compare: list[str] = field(default_factory=lambda: ["trigger"])

    def __post_init__(self) -> None:
        unknown = [name for name in self.compare if name not in PROXIES]
        if unknown:
            raise ParamsError(f"robustness.compare={self.compare} names {unknown}, not a retention proxy; choose "
                              f"among {list(PROXIES)}, e.g. [trigger], or [] for `robustness.proxy` alone")
        if self.proxy_area < 1:
            raise ParamsError(f"robustness.proxy_area={self.proxy_area} must be at least 1 (the trigger's support "
                              "itself); 2 doubles it")
        if self.proxy_multiple < 1:
            raise ParamsError(f"robustness.proxy_multiple={self.proxy_multiple} must be at least 1 (the "
                              "reconstructed trigger's norm); 2 doubles it")
        for name, example in (("proxy_steps", 150), ("proxy_search_steps", 400), ("proxy_searches", 4)):
            if getattr(self, name) < 1:
                raise ParamsError(f"robustness.{name}={getattr(self, name)} must be at least 1, e.g. {example}")
        if not self.budgets or any(not 0 < b < 1 for b in self.budgets):
            raise ParamsError(f"robustness.budgets={self.budgets}: give accuracy losses as fractions in (0, 1), "
                              "e.g. [0.005, 0.01, 0.02] for 0.5, 1 and 2 points")


@dataclass
class RemovalParams:
    """``removal.<method>`` blocks, each checked against that method's own params dataclass.

    Every registered method gets its settings (its defaults where params.yaml
    has no block). Settings that live at the top level are filled in from
    there and refused inside a block: WILD's ``beta`` (so ``-S beta=10``
    reaches every WILD variant) and ``reconstruct`` (Laundering re-runs
    Neural Cleanse with the reconstruct stage's settings).
    """

    settings: dict[str, Any] = field(default_factory=dict)  # method name -> its params dataclass

    @classmethod
    def parse(cls, raw: Any, shared: dict[str, Any]) -> RemovalParams:
        """Validate ``removal`` as read from YAML; ``shared``: top-level values methods may take."""
        from wmbench.removal import REMOVALS

        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ParamsError(f"removal must be a mapping of method names to settings, got {raw!r}")
        for name in raw:
            if name not in REMOVALS:
                close = difflib.get_close_matches(str(name), REMOVALS.names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ParamsError(
                    f"removal.{name}: {name!r} is not a removal method{hint} (valid: {', '.join(REMOVALS.names())})"
                )
        settings = {}
        for name in REMOVALS.names():
            block = raw.get(name) or {}
            if not isinstance(block, dict):
                raise ParamsError(f"removal.{name} must be a mapping of settings, got {block!r}")
            params_type = REMOVALS.get(name).Params
            fields = {f.name for f in dataclasses.fields(params_type)}
            for key, value in shared.items():
                if key in block:
                    raise ParamsError(f"removal.{name}.{key}: `{key}` is a top-level key of params.yaml; set it there")
                if key in fields:
                    block = {**block, key: value}
            settings[name] = _build_keeping(params_type, block, f"removal.{name}.", keep=set(shared))
        return cls(settings)


@dataclass
class Params:
    """The whole of params.yaml."""

    seed: int = 0
    # CPU threads per stage process. 1: DVC runs one stage at a time and `dvc queue start -j N`
    # runs N, so N <= cores never oversubscribes (two spinning threads per job on a busy 2-core
    # machine cost 10x); 0 = every core this process may use, for one run on a quiet machine.
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward passes to bfloat16 (recent GPUs)
    channels_last: bool = False  # conv weights and image batches in channels-last layout (recent GPUs)
    beta: float = 1.0  # WILD's alignment weight (Eq. 2); top level for `-S beta=...`
    data: DataParams = field(default_factory=DataParams)
    watermark: WatermarkParams = field(default_factory=WatermarkParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    vanilla: VanillaParams = field(default_factory=VanillaParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    robustness: RobustnessParams = field(default_factory=RobustnessParams)
    reconstruct: Any = None  # wmbench.reconstruct.NeuralCleanseParams, filled by parse_params
    removal: RemovalParams = field(default_factory=RemovalParams)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ParamsError(f"seed={self.seed} must be >= 0")
        if self.beta < 0:
            raise ParamsError(f"beta={self.beta} must be >= 0")
        if self.threads < 0:
            raise ParamsError(f"threads={self.threads} must be >= 0 (0 = every core, 1 = one per stage process)")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise ParamsError(f"device={self.device!r}; valid: auto, cpu, cuda, cuda:N")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``path``; :class:`ParamsError` on the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse_params(raw)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping of keys to values")
    from wmbench.reconstruct import NeuralCleanseParams

    raw = dict(raw)
    if isinstance(raw.get("watermark"), dict):
        raw["watermark"] = _split_scheme_options(raw["watermark"])
    reconstruct, removal = raw.pop("reconstruct", None) or {}, raw.pop("removal", None)
    params = _build(Params, raw, "")
    params.reconstruct = _build(NeuralCleanseParams, reconstruct, "reconstruct.")
    params.removal = RemovalParams.parse(removal, {"beta": params.beta, "reconstruct": params.reconstruct})
    return params


def _split_scheme_options(section: dict[str, Any]) -> dict[str, Any]:
    """Move ``watermark.<scheme>: {...}`` blocks under ``options``."""
    from wmbench.watermarks import WATERMARKS

    section = dict(section)
    options = {}
    for scheme in WATERMARKS.names():
        if scheme in section:
            block = section.pop(scheme)
            if not isinstance(block, dict):
                raise ParamsError(f"watermark.{scheme} must be a mapping of options, got {block!r}")
            options[scheme] = block
    section["options"] = options
    return section


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where or 'params'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    renamed = getattr(cls, "RENAMED", {})
    for key in raw:
        if key in renamed:
            raise ParamsError(f"{where}{key} was renamed; use {where}{renamed[key]}")
        if key not in names:
            raise ParamsError(_unknown(f"{where}{key}", key, names))
    kwargs = {name: _coerce(hints[name], raw[name], f"{where}{name}") for name in names if name in raw}
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except ValueError as err:  # a part's own check, e.g. a removal method's settings
        raise ParamsError(f"{where.rstrip('.') or 'params'}: {err}") from None


def _build_keeping(cls: type, raw: dict[str, Any], where: str, keep: set[str]) -> Any:
    """:func:`_build`, with the values of ``keep`` passed through already validated."""
    kept = {key: raw[key] for key in keep if key in raw}
    built = _build(cls, {key: value for key, value in raw.items() if key not in kept}, where)
    return dataclasses.replace(built, **kept) if kept else built


def _coerce(kind: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ParamsError(f"{key}={value!r}; valid: {', '.join(map(str, typing.get_args(kind)))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, key)
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key} must be a mapping, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and (type(value) is not kind):
        raise ParamsError(f"{key}={value!r} is a {type(value).__name__}; expected {kind.__name__}")
    return value


def _unknown(key: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint} (valid here: {', '.join(sorted(valid))})"


def _check_name(key: str, value: str, registry: Any) -> None:
    if value not in registry:
        close = difflib.get_close_matches(str(value), registry.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ParamsError(f"{key}={value!r} is unknown{hint} (valid: {', '.join(registry.names())})")


def _check_path(key: str, value: str) -> None:
    if value and not Path(value).exists():
        raise ParamsError(f"{key}={value!r} does not exist; fix the path or set it to '' ")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ParamsError(f"{key}={value} must be positive")


def _is_cuda_index(device: str) -> bool:
    return device.startswith("cuda:") and device[5:].isdigit()
