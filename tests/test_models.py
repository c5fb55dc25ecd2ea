import pytest
import torch

from wmbench.models import ARCHS, create_model


@pytest.mark.parametrize("arch", ARCHS.names())
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_arch_forward_shape(arch, channels, size):
    model = create_model(arch, in_channels=channels, image_size=size, num_classes=7)
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("arch", ARCHS.names())
def test_arch_exposes_conv_features(arch):
    model = create_model(arch, in_channels=1, image_size=28, num_classes=10)
    features = model.features(torch.rand(2, 1, 28, 28))
    assert features.dim() == 4 and features.shape[0] == 2


def test_arch_too_small_image_names_the_problem():
    with pytest.raises(ValueError, match="lenet needs images of at least"):
        create_model("lenet", in_channels=1, image_size=6, num_classes=10)
