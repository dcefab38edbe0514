"""The five optimizers on f(x, y) = x²/20 + y² from (-7, 2), 30 steps (book fig. 6-8 and its kin).

Book ch. 6 ``optimizer_compare_naive.py`` with its learning rates: SGD 0.95, Momentum 0.1,
AdaGrad 1.5, Adam 0.3, each over the book's other settings (``_book.OPTIMIZERS``). Nesterov is
not in the book's figure: we give it Momentum's lr 0.1 so the two can be compared directly. Each optimizer is
ours (``torch_dlbasics.optim``) stepping one tensor ``[x, y]`` whose gradient autograd computes.
The minimum is at (0, 0). No data and nothing random (so no seed), and ``--quick`` only lowers
the resolution of the contours.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _book
import _cli
import _results

NAME = "optimizer_paths"
START = (-7.0, 2.0)
STEPS = 30


def f(x: Any, y: Any) -> Any:
    return x**2 / 20.0 + y**2


LR = {"SGD": 0.95, "Momentum": 0.1, "Nesterov": 0.1, "AdaGrad": 1.5, "Adam": 0.3}


def path(name: str, device: torch.device) -> np.ndarray:
    """Positions (start + one per step) of our optimizer ``name`` at lr ``LR[name]`` on f, float64."""
    xy = torch.tensor(START, dtype=torch.float64, device=device, requires_grad=True)
    opt = _book.make_optimizer(name, [xy], lr=LR[name])
    history = [xy.detach().cpu().numpy().copy()]
    for _ in range(STEPS):
        opt.zero_grad()
        f(xy[0], xy[1]).backward()
        opt.step()
        history.append(xy.detach().cpu().numpy().copy())
    return np.stack(history)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _cli.parser(__doc__, NAME, seeds=None).parse_args(argv)
    started = time.perf_counter()
    device = _cli.setup(args)
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    n = 60 if args.quick else 400
    gx, gy = np.meshgrid(np.linspace(-10, 10, n), np.linspace(-5, 5, n))
    gz = f(gx, gy)
    gz[gz > 7] = 0  # as the book: mask the high region so the contours near the minimum show

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    results: dict[str, Any] = {"function": "x**2/20 + y**2", "start": list(START), "steps": STEPS}
    per_opt: dict[str, Any] = {}
    for ax, name in zip(axes.flat, tqdm(LR, desc="optimizers", leave=False)):
        h = path(name, device)
        hp = {**_book.OPTIMIZERS[name], "lr": LR[name]}
        ax.contour(gx, gy, gz, levels=15, colors="0.75", linewidths=0.8)
        ax.plot(h[:, 0], h[:, 1], "o-", color="tab:red", ms=3, lw=1)
        ax.plot(0, 0, "+", color="k", ms=10)
        ax.set(xlim=(-10, 10), ylim=(-5, 5), xlabel="x", ylabel="y")
        shown = {k: v for k, v in hp.items() if k in ("lr", "momentum")}
        ax.set_title(f"{name} ({', '.join(f'{k}={v}' for k, v in shown.items())})")
        per_opt[name] = {
            **hp,
            "final_xy": h[-1].tolist(),
            "final_f": float(f(h[-1, 0], h[-1, 1])),
            "path": h.tolist(),
        }
    axes.flat[-1].axis("off")
    fig.suptitle("f(x, y) = x²/20 + y², 30 steps from (-7, 2)")
    fig.tight_layout()
    results["optimizers"] = per_opt
    _results.write_results(args.out, NAME, results, fig, started, argv)
    for name, r in per_opt.items():
        print(
            f"{name:9s} final (x, y) = ({r['final_xy'][0]: .4f}, {r['final_xy'][1]: .4f})  f = {r['final_f']:.3g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
