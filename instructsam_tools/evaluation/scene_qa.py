"""How well the VLM answers questions about the synthetic scenes (stage 2 of the pretrained-stages recipe).

    python -m instructsam_tools.evaluation.scene_qa --checkpoint DIR [--data synthetic_qa:test:1200] [--out F]

Prints the answer accuracy (greedy decoding's exact match; training.language_objective) overall and per question
kind, next to what the most frequent answer of each kind would score, so grounding shows as the gap between them:
a VLM that ignores the image can still learn each kind's priors.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import torch

from instructsam_tools.data.batching import build_dataset
from instructsam_tools.training.language_objective import evaluate_answers


def majority_baseline(dataset, max_samples: int | None = None) -> dict[str, float]:
    """Per question kind, the share of questions whose answer is the kind's most frequent one (no image)."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for i in range(min(len(dataset), max_samples or len(dataset))):
        sample = dataset[i]
        answers[sample.kind][sample.answer] += 1
    return {kind: c.most_common(1)[0][1] / sum(c.values()) for kind, c in sorted(answers.items())}


def format_scene_qa(summary: dict, baseline: dict[str, float]) -> str:
    lines = [f"{'question kind':<14} {'answered':>9} {'majority answer':>16}"]
    for kind, prior in baseline.items():
        lines.append(f"{kind:<14} {summary[f'acc/{kind}']:>9.3f} {prior:>16.3f}")
    lines.append(f"{'all':<14} {summary['answer_acc']:>9.3f}   ({summary['questions']} questions, "
                 f"answer-token loss {summary['loss']:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from instructsam_tools.evaluation.evaluate import load_model

    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.evaluation.scene_qa",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="InstructSAM directory or a training step checkpoint")
    parser.add_argument("--data", default="synthetic_qa:test:1200", help="a synthetic_qa: data spec")
    parser.add_argument("--image-size", type=int, default=128, help="synthetic image size (default 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if not args.data.startswith("synthetic_qa:"):
        parser.error(f"--data must be a synthetic_qa: spec, got {args.data!r}")
    dataset = build_dataset(args.data, args.image_size)
    model = load_model(args.checkpoint, args.device)
    summary = evaluate_answers(model, dataset)
    baseline = majority_baseline(dataset)
    print(format_scene_qa(summary, baseline))
    result = {"run": {"checkpoint": str(args.checkpoint), "data": args.data}, **summary,
              "majority_baseline": baseline}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
