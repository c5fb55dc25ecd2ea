"""Neural Cleanse trigger reconstruction for every class at once, and MAD outlier detection.

Wang et al., Neural Cleanse, IEEE S&P 2019; used by Aiken et al., Neural
Network Laundering, Sec. 2.2 and Sec. 4 Step 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NeuralCleanseParams:
    """``reconstruct.*`` in params.yaml: the optimisation and the outlier rule."""

    steps: int = 300  # optimisation steps; each step sees one batch for every class
    batch_size: int = 32  # adversary images per class per step
    lr: float = 0.1  # Adam on the free mask and pattern parameters
    init_cost: float = 1e-3  # initial lambda on |m|_1
    attack_success_target: float = 0.99  # lambda rises while attack success stays above this
    patience: int = 5  # steps before adjusting lambda (Neural Cleanse's patience)
    cost_multiplier: float = 1.5  # lambda is multiplied / divided by this
    early_stop_patience: int = 20  # stop a class once its best mask norm stops improving this long
    anomaly_threshold: float = 2.0  # flag classes whose anomaly index exceeds this (Neural Cleanse: 2)
