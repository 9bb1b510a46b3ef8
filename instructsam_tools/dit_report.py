"""The DIT comparison table and plot (docs/dit.md, docs/dit.png) from scripts/dit_compare.sh's evaluations.

    python -m instructsam_tools.dit_report RUNS_DIR DOC.md --steps N --threshold T

Reads RUNS_DIR/<run>/single/metrics.json (single-target samples: DIT's P@x, oIoU, mIoU) and .../multi/metrics.json
(no target or several: mAP, gIoU, N-acc). Notes written after the marker line in DOC.md are kept.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from instructsam_tools.evaluation.report import plot_family_bars

MARKER = "<!-- notes below are kept when scripts/dit_compare.sh regenerates the table above -->"
RUNS = [  # (run, model, image encoder)
    ("sam3_text", "SAM3 default text prompting", "trained"),
    ("e_dit", "E-DIT", "trained"),
    ("l_dit", "L-DIT", "trained"),
    ("sam3_text_frozen", "SAM3 default text prompting*", "frozen"),
    ("e_dit_frozen", "E-DIT*", "frozen"),
    ("l_dit_frozen", "L-DIT*", "frozen"),
    ("instructsam", "InstructSAM (one pass)", "trained"),
]
SINGLE = ("P@0.5", "P@0.7", "P@0.9", "oIoU", "mIoU")
MULTI = ("mAP", "gIoU", "N-acc")


def read(runs_dir: Path) -> dict[str, dict]:
    done = {}
    for run, _, _ in RUNS:
        single, multi = runs_dir / run / "single" / "metrics.json", runs_dir / run / "multi" / "metrics.json"
        if single.is_file() and multi.is_file():
            s, m = json.loads(single.read_text()), json.loads(multi.read_text())
            done[run] = {**{k: s.get(k) for k in SINGLE}, **{k: m.get(k) for k in MULTI}}
    return done


def order_found(done: dict[str, dict], suffix: str = "") -> str:
    """Whether DIT's order (L-DIT > E-DIT > default prompting, on oIoU) holds among the runs with `suffix`."""
    names = [f"l_dit{suffix}", f"e_dit{suffix}", f"sam3_text{suffix}"]
    if not all(n in done and done[n]["oIoU"] is not None for n in names):
        return "not all three evaluated yet"
    values = [done[n]["oIoU"] for n in names]
    ranked = " > ".join(f"{n} {v:.3f}" for n, v in sorted(zip(names, values), key=lambda p: -p[1]))
    verdict = "holds" if values[0] > values[1] > values[2] else "does not hold"
    return f"{verdict} (oIoU: {ranked})"


def write(runs_dir: Path, doc: Path, steps: int, threshold: float) -> str:
    done = read(runs_dir)
    old = doc.read_text() if doc.is_file() else ""
    notes = old[old.index(MARKER):] if MARKER in old else MARKER + "\n"
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# DIT and InstructSAM at one budget ({steps} steps each, tiny stack, synthetic data)\n",
             f"Command: `bash scripts/dit_compare.sh {steps} {threshold}` (synthetic:test:800, score threshold "
             f"{threshold} for every run). Single-target samples: DIT's metrics; the other samples (no target or "
             f"several): the set metrics. * = SAM3's image encoder frozen.\n",
             "| model | image encoder | " + " | ".join(SINGLE) + " | " + " | ".join(MULTI) + " |",
             "|---|---|" + "---|" * (len(SINGLE) + len(MULTI))]
    for run, name, encoder in RUNS:
        if run not in done:
            lines.append(f"| {name} | {encoder} | not run yet |" + " |" * (len(SINGLE) + len(MULTI) - 1))
            continue
        lines.append(f"| {name} | {encoder} | " + " | ".join(fmt(done[run][k]) for k in SINGLE + MULTI) + " |")
    lines += ["", f"DIT's order (L-DIT > E-DIT > default prompting), encoder trained: {order_found(done)}; "
                  f"encoder frozen: {order_found(done, '_frozen')}."]
    if done:
        png = doc.with_suffix(".png")
        plot_family_bars({"per_family": {dict((r, n) for r, n, _ in RUNS)[r]: m for r, m in done.items()}}, png,
                         metrics=("P@0.5", "oIoU", "mIoU", "mAP", "gIoU", "N-acc"),
                         title=f"DIT vs InstructSAM, {steps} steps each (tiny, synthetic test)")
        lines += ["", f"![DIT comparison]({png.name})"]
    text = "\n".join(lines) + "\n\n" + notes
    doc.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.dit_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir")
    parser.add_argument("doc")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threshold", type=float, required=True)
    args = parser.parse_args(argv)
    print(write(Path(args.runs_dir), Path(args.doc), args.steps, args.threshold))


if __name__ == "__main__":
    main()
