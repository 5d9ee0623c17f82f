"""Peak memory of one training step with truncated BPTT vs full BPTT.

    python benchmarks/tbptt_memory.py            # runs each configuration in a fresh subprocess

Each configuration trains a DKF (z 16, RNN 64, Gaussian emission, FIVO N=4) for one optimiser pass
over a batch of 4 sequences and reports the process's peak resident memory above its level after
the imports (ru_maxrss). With chunks of k steps, memory should track k, not the sequence length T.
"""

import json
import resource
import subprocess
import sys


def run_one(T: int, k):
    import torch

    from deepstate.data import SequenceBatch
    from deepstate.inference import Trainer
    from deepstate.models import build

    torch.manual_seed(0)
    batch = SequenceBatch.from_sequences([torch.randn(T, 2).cumsum(0) * 0.1 for _ in range(4)])
    lsm = build("dkf", 2, "gaussian", z_dim=16, rnn_dim=64, transition_dim=64, emission_dim=64)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer = Trainer(lsm, objective="fivo", num_particles=4, batch_size=4, progress=False, tbptt=k)
    trainer.fit(batch, epochs=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"T": T, "k": k, "peak_mb_above_imports": (peak - base) / 1024}


def main():
    if len(sys.argv) > 1:
        T, k = int(sys.argv[1]), (None if sys.argv[2] == "none" else int(sys.argv[2]))
        print(json.dumps(run_one(T, k)))
        return
    for T, k in ((50, None), (10_000, 50), (10_000, None)):
        out = subprocess.run([sys.executable, __file__, str(T), str(k).lower()], capture_output=True, text=True)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-300:]
        print(line, flush=True)


if __name__ == "__main__":
    main()
