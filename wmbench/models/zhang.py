"""The Zhang et al. models as printed by Aiken et al. (Neural Network Laundering, App. B)."""

from __future__ import annotations

from torch import nn

from wmbench.models.base import ARCHS, Classifier, check_input, feature_shape


@ARCHS.register("zhang_mnist")
class ZhangMNIST(Classifier):
    """Aiken et al., Table 5: conv32(5x5)-pool-conv16(5x5)-pool-dense512-dense, valid padding."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        check_input("zhang_mnist", in_channels, image_size, num_classes, minimum=16)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2),  # (32, 12, 12) for 28x28
            nn.Conv2d(32, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # (16, 4, 4)
        )
        flat = feature_shape(self.features, in_channels, image_size).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


@ARCHS.register("zhang_cifar")
class ZhangCIFAR(Classifier):
    """Aiken et al., Table 7: three blocks of two conv3x3+BN (32, 64, 128), pool, dropout.

    Table 7's weight decay of 1e-4 is an optimizer setting here (``train.weight_decay``).
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        check_input("zhang_cifar", in_channels, image_size, num_classes, minimum=8)
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2), nn.Dropout(0.2),
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2), nn.Dropout(0.3),
            *_conv_bn(64, 128), *_conv_bn(128, 128), nn.MaxPool2d(2), nn.Dropout(0.4),
        )  # (128, H/8, W/8)
        flat = feature_shape(self.features, in_channels, image_size).numel()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
