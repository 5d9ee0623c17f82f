"""100 rnn_step-style single steps of a width-600 GRU: plain vs orthogonal-parametrised (cached / uncached)."""
import statistics, sys, time
import torch
from deepstate.models.nn import make_rnn, rnn_initial, rnn_step
from deepstate.models.orthogonal import cached_parametrizations, orthogonal_parametrize_

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
torch.manual_seed(0)
B, F, H, T, REPEATS = 16, 88, 600, 100, 5
x = torch.randn(B, T, F)

def run(rnn):
    state = rnn_initial(rnn, (B,), x)
    for t in range(T):
        state = rnn_step(rnn, x[:, t], state)
    return state["h"]

def bench(rnn, cached, repeats=REPEATS):
    times = []
    for _ in range(repeats + 1):  # first run is a warm-up
        t0 = time.perf_counter()
        if cached:
            with cached_parametrizations():
                run(rnn)
        else:
            run(rnn)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e3

plain = make_rnn("gru", F, H)
print(f"threads={torch.get_num_threads()}  B={B} F={F} H={H}, {T} steps; median of {REPEATS} runs (uncached: 3), ms per {T} steps")
print(f"plain GRU                 : {bench(plain, False):9.1f}")
for m in ("cayley", "expm"):
    par = orthogonal_parametrize_(make_rnn("gru", F, H), map=m)
    with torch.no_grad():
        par.parametrizations.weight_hh_l0.original.normal_(0, 0.01)
    print(f"orthogonal {m:6s} cached  : {bench(par, True):9.1f}")
    print(f"orthogonal {m:6s} uncached: {bench(par, False, repeats=3):9.1f}")
