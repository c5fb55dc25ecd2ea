"""What an adversary can measure about a removal without the owner's trigger set or test set.

Two figures, both on the slice of its own images it kept aside
(``data.adversary_holdout``, never trained on):

- **held-out accuracy**, its estimate of the test accuracy a removal costs;
- **proxy retention**, its estimate of watermark retention: the share of those
  images (true class excluded) that the trigger Neural Cleanse reconstructed
  for the suspected class sends to that class. The suspected class is the one
  with the smallest trigger norm (Wang et al., Neural Cleanse, Sec. IV-B: the
  likeliest infected label); the adversary does not know the true target.

Why this proxy: Neural Cleanse's own mitigation is judged by the reconstructed
trigger's attack success after patching (Wang et al., Sec. VI), and it needs
nothing the adversary lacks. Its known bias: Laundering retrains against this
very trigger (Aiken et al., Sec. 4 Step 3), so its proxy reads lower than its
true retention more than other methods' do; :mod:`wmbench.robustness` reports
the true retention of every pick beside the choice.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wmbench.data import adversary_holdout_split
from wmbench.reconstruct import Reconstruction, mad_anomaly
from wmbench.training import DeviceData, accuracy


def adversary_holdout(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                      device: torch.device) -> DeviceData:
    """The held-out slice the ``remove`` stage kept out of training (same split, same seed)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"data.adversary_holdout={fraction}: the adversary needs a held-out slice to judge "
                         "removals by; set it in (0, 0.5], e.g. 0.2, and re-run the remove stages")
    _, held = adversary_holdout_split(labels, fraction, seed)
    return DeviceData.from_arrays(images[held], labels[held], device)


def suspected_class(reconstruction: Reconstruction) -> int:
    """The class whose reconstructed trigger is smallest: Neural Cleanse's likeliest infected label."""
    return mad_anomaly(reconstruction.l1.float().cpu()).most_likely


@torch.no_grad()
def proxy_retention(model: nn.Module, reconstruction: Reconstruction, label: int, holdout: DeviceData) -> float:
    """Share of ``holdout`` images not of class ``label`` that ``label``'s reconstructed trigger sends to it."""
    others = holdout.labels != label
    if not bool(others.any()):
        raise ValueError(f"every held-out image is of class {label}; the proxy needs images of other classes")
    stamped = reconstruction.stamp(holdout.images[others], label)
    return accuracy(model, DeviceData(stamped, torch.full_like(holdout.labels[others], label)))
