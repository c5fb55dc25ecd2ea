"""Architectures by name: ``create_model("lenet", in_channels=1, image_size=28, num_classes=10)``."""

from wmbench.models import lenet, resnet, vgg, zhang  # noqa: F401  (register)
from wmbench.models.base import ARCHS, Classifier, create_model

__all__ = ["ARCHS", "Classifier", "create_model"]
