"""What the JSB benchmark scripts share: the training split, the models at the benchmark sizes, the optimiser."""

from __future__ import annotations

import torch

#: Pyro's ``examples/dmm.py`` DMM: z 100, gated transition 200, emitter 100, RNN 600 (a ReLU ``nn.RNN`` there)
DMM_SIZES = dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600)


def jsb_train(data_dir=None):
    from deepstate.data import load_polyphonic

    return load_polyphonic("jsb_chorales", data_dir=data_dir)["train"]


def benchmark_model(model: str, pyro_config: bool = False):
    """``model`` at the papers' sizes; ``pyro_config``: the DKF exactly as in Pyro's example (ReLU RNN)."""
    from deepstate.models import build

    hyper = {}
    if model == "dkf":
        hyper = dict(DMM_SIZES, **({"rnn": "rnn_relu"} if pyro_config else {}))
    return build(model, 88, "bernoulli", **hyper)


def benchmark_optimizer(params):
    """Adam with Pyro's example's ClippedAdam settings (lr 3e-4, betas (0.96, 0.999)); clip norms at 10 outside."""
    return torch.optim.Adam(params, lr=3e-4, betas=(0.96, 0.999))


def loss_normalizer(train, batch_size: int) -> float:
    """A fixed loss scale: observed frames per minibatch on average (not each minibatch's own count)."""
    return train.num_frames / -(-train.batch_size // batch_size)
