"""Recompute a train job's eval loss outside Ray: its model/ on its eval/ blocks, plain transformers.

    .venv/bin/python bench/recompute_eval.py out/demo/train_v1 out/demo/train_v2

Prints, per output, the eval loss and perplexity metrics.json reports for the best epoch (the
one model/ holds) and the same recomputed here, and the top-5 fills of the reference prompts.
"""

import json
import math
import sys

import pyarrow.parquet as pq
import torch
from reviewlm.score.prompts import REFERENCE_PROMPTS
from transformers import AutoModelForMaskedLM, pipeline


def eval_loss(out: str) -> float:
    blocks = pq.read_table(f"{out}/eval").to_pydict()
    model = AutoModelForMaskedLM.from_pretrained(f"{out}/model").eval()
    total = count = 0.0
    with torch.inference_mode():
        for i in range(0, len(blocks["input_ids"]), 64):
            ids, labels = (torch.tensor(blocks[k][i:i + 64]).long() for k in ("input_ids", "labels"))
            logits = model(input_ids=ids).logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                             ignore_index=-100, reduction="sum"))
            count += float((labels != -100).sum())
    return total / count


for out in sys.argv[1:]:
    reported = json.load(open(f"{out}/metrics.json"))["best"]
    loss = eval_loss(out)
    print(f"{out}: best epoch {reported['epoch']}: reported eval loss {reported['eval_loss']:.4f} "
          f"(perplexity {reported['perplexity']:.3f}); recomputed {loss:.4f} (perplexity {math.exp(loss):.3f}); "
          f"relative difference {abs(loss - reported['eval_loss']) / loss:.2e}")
    fill = pipeline("fill-mask", model=f"{out}/model")
    for prompt in REFERENCE_PROMPTS:
        print(f"  {prompt:<62} " + ", ".join(f"{p['token_str']} {p['score']:.2f}" for p in fill(prompt, top_k=5)))
