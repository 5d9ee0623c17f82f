"""The structured guide's encoder options that reproduce Pyro's DMM guide: notes alone as input
(``observed_channel=False``) and a learned initial RNN state (``learn_h0=True``)."""

import torch

from deepstate.data import SequenceBatch
from deepstate.models.dkf import StructuredInferenceGuide


def _batch(seed=0, D=3, lengths=(5, 3, 1)):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, D, generator=g) for n in lengths]
    return SequenceBatch.from_sequences(seqs)


def test_learned_h0_is_each_sequences_initial_state_under_padding():
    """The backward encoder with a learned ``h0`` equals a plain ``nn.RNN`` run on each sequence alone,
    reversed, from that ``h0`` (so padding and packing do not touch it)."""
    torch.manual_seed(0)
    guide = StructuredInferenceGuide(3, 2, rnn_dim=4, kind="st-r", rnn="rnn_relu", orthogonal=False,
                                     observed_channel=False, learn_h0=True)
    with torch.no_grad():
        guide.h0["bac"].copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
    batch = _batch()
    h = guide.encode(batch, None)["h"]
    rnn = guide.rnns["bac"]
    for b, seq in enumerate(batch.sequences()):
        n = seq.shape[0]
        ref = rnn(seq.flip(0)[None], guide.h0["bac"].view(1, 1, -1))[0][0].flip(0)
        torch.testing.assert_close(h[b, :n], ref)
    # and h0 matters: a zero initial state gives other encodings
    with torch.no_grad():
        guide.h0["bac"].zero_()
    assert not torch.allclose(guide.encode(batch, None)["h"][0, -1], h[0, -1])
    # it is a parameter the optimiser sees
    assert any(p is guide.h0["bac"] for p in guide.parameters())


def test_without_the_observed_channel_the_input_is_the_data_alone():
    torch.manual_seed(1)
    guide = StructuredInferenceGuide(3, 2, rnn_dim=4, kind="st-r", rnn="gru", observed_channel=False)
    assert guide.rnns["bac"].input_size == 3 and guide.h0 is None
    batch = _batch(1)
    # a missing value reads as zero (NaN there is never seen)
    x, observed = batch.x.clone(), batch.observed.clone()
    x[0, 1, 2], observed[0, 1, 2] = float("nan"), False
    missing = SequenceBatch(x=x, observed=observed, lengths=batch.lengths, valid=batch.valid)
    zeroed = SequenceBatch(x=torch.where(observed, x, 0.0), observed=batch.observed, lengths=batch.lengths,
                           valid=batch.valid)
    torch.testing.assert_close(guide.encode(missing, None)["h"], guide.encode(zeroed, None)["h"])
    # the default keeps the mask channel: a missing value and an observed zero differ there
    default = StructuredInferenceGuide(3, 2, rnn_dim=4, kind="st-r", rnn="gru")
    assert default.rnns["bac"].input_size == 6
    assert not torch.allclose(default.encode(missing, None)["h"], default.encode(zeroed, None)["h"])
