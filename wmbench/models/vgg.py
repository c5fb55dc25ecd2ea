"""VGG-16 for 32x32 inputs, the CIFAR-10 model of WILD (Liu et al., WILD, Sec. IV-A)."""

from __future__ import annotations

from torch import nn

from wmbench.models.base import ARCHS, Classifier, check_input

# Simonyan & Zisserman configuration D; "M" is a 2x2 max-pool.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@ARCHS.register("vgg16")
class VGG16(Classifier):
    """VGG-16 with batch norm; the CIFAR variant's single linear head on 512 features.

    Images smaller than 32x32 still work: pooling stops once the map is 1x1.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        check_input("vgg16", in_channels, image_size, num_classes, minimum=8)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for spec in VGG16_LAYERS:
            if spec == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += [nn.Conv2d(channels, spec, 3, padding=1), nn.BatchNorm2d(spec), nn.ReLU()]
                channels = spec
        self.features = nn.Sequential(*layers)  # (512, H/32, W/32)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )
