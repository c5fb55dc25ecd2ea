"""Property-based tests: parameter validation and IDX parsing never fail in surprising ways."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wmbench.data.idx import parse_idx
from wmbench.params import Params, ParamsError, parse_params

SECTIONS = {
    "data": ["name", "root", "download", "adversary_fraction", "nmae"],
    "train": ["epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "epoch"],
    "watermark": ["scheme", "target", "size", "poison_fraction", "embedding", "sise"],
    "model": ["arch", "ach"],
    "vanilla": ["seeds"],
}
values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(-2, 2), st.just(float("nan")), st.text(max_size=12),
    st.sampled_from(["digits", "lenet", "noise", "rmsprop", "cosine", "scratch", "cpu", "auto"]),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def params_dicts(draw):
    raw = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=3)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[section]), unique=True, min_size=1, max_size=3))
        raw[section] = {key: draw(values) for key in keys}
    for key in draw(st.lists(st.sampled_from(["seed", "beta", "device", "sede"]), unique=True, max_size=2)):
        raw[key] = draw(values)
    return raw


@settings(max_examples=300, deadline=None)
@given(params_dicts())
def test_params_either_validate_or_raise_params_error(raw):
    try:
        params = parse_params(raw)
    except ParamsError as err:
        assert str(err)  # a message, never an empty error
    else:
        assert isinstance(params, Params)
        assert 0 < params.data.adversary_fraction <= 1 and params.train.epochs > 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_idx_parser_rejects_garbage_with_value_error(raw):
    try:
        array = parse_idx(raw)
    except ValueError as err:
        assert "IDX" in str(err)
    else:
        assert array.size * array.itemsize == len(raw) - 4 - 4 * array.ndim


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.data())
def test_idx_round_trips_uint8_arrays(shape, data):
    values = data.draw(st.lists(st.integers(0, 255), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    array = np.array(values, dtype=np.uint8).reshape(shape)
    raw = bytes([0, 0, 0x08, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape) + array.tobytes()
    assert np.array_equal(parse_idx(raw), array)
