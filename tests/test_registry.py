import pytest

from wmbench.data import DATASETS
from wmbench.models import ARCHS
from wmbench.registry import Registry
from wmbench.watermarks import WATERMARKS


@pytest.mark.parametrize("registry", [DATASETS, ARCHS, WATERMARKS], ids=lambda r: r.kind)
def test_unknown_name_lists_valid_names(registry):
    with pytest.raises(ValueError, match="valid: ") as err:
        registry.get("no-such-name")
    for name in registry.names():
        assert name in str(err.value)


def test_duplicate_name_fails_at_registration():
    registry = Registry("thing")
    registry.register("a")(object)
    with pytest.raises(ValueError, match="duplicate thing name 'a'"):
        registry.register("a")(object)
