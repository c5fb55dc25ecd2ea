"""LeNet-5, the MNIST model of WILD (Liu et al., WILD, Sec. IV-A)."""

from __future__ import annotations

from torch import nn

from wmbench.models.base import ARCHS, Classifier, check_input, feature_shape


@ARCHS.register("lenet")
class LeNet(Classifier):
    """LeCun et al. 1998 layout: conv6-pool-conv16-pool-fc120-fc84-fc.

    WILD does not print its LeNet; we take the classic LeNet-5 with ReLU and
    max-pooling, padding the first conv so 28x28 inputs keep LeNet's 32x32 maps.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        check_input("lenet", in_channels, image_size, num_classes, minimum=12)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (6, H/2, W/2)
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # (16, 5, 5) for 28x28
        )
        flat = feature_shape(self.features, in_channels, image_size).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )
