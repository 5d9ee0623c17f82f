"""How much the closed-form KL reduces the variance of the single-sample ELBO and of its gradient.

    python benchmarks/kl_variance.py                    # the dmm row's best checkpoint (runs/jsb/dmm)
    python benchmarks/kl_variance.py --at init          # the same model freshly initialised

One fixed minibatch of JSB training chorales (the first ``--batch``), the dmm row's model and guide;
``--draws`` independent single-sample ELBOs with the latent terms sampled (``log p(z_t|.) - log q(z_t|.)``
at the draw) and in closed form (``-KL(q_t || p_t)`` given the sampled past: ``analytic_kl=True``).
Prints, per estimator, the bound's mean and standard deviation (nats per frame) and the total variance
of the gradient of the per-frame loss (the sum over all parameters of the per-coordinate variance over
draws), and the squared distance between the two mean gradients relative to its expectation under
equal means (estimated from the paired differences: both estimators see the same noise), which should
be of order 1 since both estimate the same gradient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    import jsb
    from deepstate.data import SequenceBatch
    from deepstate.inference.objectives import ParticleELBO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", default="dmm")
    p.add_argument("--out", default="runs/jsb", help="where the row's checkpoint is (jsb.py --out)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--at", choices=["trained", "init"], default="trained")
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = jsb.load(args.data_dir)
    train = data["train"]
    batch = train[list(range(args.batch))] if isinstance(train, SequenceBatch) else train
    row = jsb.ROWS[args.row]
    lsm = jsb.build_row(row, args.seed)
    if args.at == "trained":
        ck = Path(args.out) / args.row / "checkpoint.pt"
        if not ck.is_file():
            p.error(f"--at trained: no checkpoint at {ck} (run benchmarks/jsb.py {args.row} first, or use --at init)")
        state = torch.load(ck, map_location="cpu", weights_only=False)
        lsm.load_state_dict(state.get("best_state") or state["model"])
    params = [q for q in lsm.parameters() if q.requires_grad]
    results = {}
    for name, analytic in (("sampled KL", False), ("closed-form KL", True)):
        obj = ParticleELBO(1, analytic_kl=analytic)
        torch.manual_seed(args.seed + 1)
        bounds, grads = [], []
        for _ in range(args.draws):
            loss, res = obj.loss(lsm, batch)
            g = torch.autograd.grad(loss, params)
            grads.append(torch.cat([x.reshape(-1) for x in g]).double())
            bounds.append(float(res.log_z.detach().sum()) / float(res.frames.sum()))
        G = torch.stack(grads)
        b = torch.tensor(bounds, dtype=torch.float64)
        results[name] = (b, G)
        print(f"{name:>15}: bound {b.mean():.4f} +- {b.std():.4f} nats/frame (sd over {args.draws} draws); "
              f"gradient total variance {G.var(0).sum():.4g}, squared norm of the mean {G.mean(0).pow(2).sum():.4g}")
    (bs, Gs), (ba, Ga) = results["sampled KL"], results["closed-form KL"]
    diff = (Gs.mean(0) - Ga.mean(0)).pow(2).sum()
    # E||mean_s - mean_a||^2 under equal expectations; both used the same noise (seed), so the pairs are
    # correlated and the variance of their difference is estimated from the paired differences
    se2 = (Gs - Ga).var(0).sum() / args.draws
    print(f"variance ratio sampled / closed form: bound {bs.var() / ba.var():.1f}x, gradient {Gs.var(0).sum() / Ga.var(0).sum():.1f}x")
    print(f"mean gradients: ||difference||^2 = {diff:.4g}, expected under equal means {se2:.4g} (ratio {diff / se2:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
