"""Train the example's checkpoints (seeded, a few seconds on CPU) and save them as torch state dicts.

    python examples/custom_mlp/make_checkpoints.py [OUT_DIR] [--hidden 32] [--seed 0]

writes OUT_DIR/pretrained.pt (trained on rings) and OUT_DIR/<task>.pt, each fine-tuned from it on one task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from model import PRETRAIN_TASK, TASKS, TaskEvaluator, build, make_data
from torch import nn

TRAIN_POINTS = 2000
TRAIN_SEED = 1  # training points; the evaluators in experiment.yaml draw theirs from seed 0


def train(model: nn.Module, task: str, epochs: int, lr: float, seed: int, batch_size: int = 64) -> None:
    """Adam on minibatches of the task's training points, shuffled by a generator seeded with `seed`."""
    x, y = (torch.from_numpy(a) for a in make_data(task, TRAIN_POINTS, TRAIN_SEED))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path(__file__).resolve().parent / "checkpoints")
    parser.add_argument("--hidden", type=int, default=32, help="must match model.builder.hidden in experiment.yaml")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and results do not depend on the machine's cores
    torch.manual_seed(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pretrained = build(args.hidden)
    train(pretrained, PRETRAIN_TASK, epochs=15, lr=1e-2, seed=args.seed)
    runs = {"pretrained": (PRETRAIN_TASK, pretrained)}
    for i, task in enumerate(TASKS, start=1):
        model = build(args.hidden)
        model.load_state_dict(pretrained.state_dict())
        train(model, task, epochs=8, lr=5e-3, seed=args.seed + i)
        runs[task] = (task, model)
    for name, (task, model) in runs.items():
        path = args.out_dir / f"{name}.pt"
        torch.save(model.state_dict(), path)
        accuracy = TaskEvaluator(task)(model, "cpu")["correct"].mean()
        print(f"wrote {path}  (trained on {task}, accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
