"""The benchmark suite: `python -m instructsam_tools.benchmarks` (or `bash scripts/bench.sh`) measures, in one run, the cost of every path and prints each figure beside its target with PASS/FAIL; BENCHMARKS.md holds the last run.

    common.py     timing (medians after warm-up), targets, the random benchmark checkpoints, frames, pipelines
    paths.py      1. keyframe / tracked frame / instruction switch / cold pass; 2. N instructions batched
    node_section.py  3. the node's overhead per frame and its message size
    scaling.py    4. latency and memory vs K and vs tracked objects
    stream.py     5. resident memory over a long stream (its own process)
    full_size.py  6. the full-size composition on paper: parameters, FLOPs, activation memory, H100 estimate
    flops.py      the shape-only FLOP counter and the memory tracker the sections use
    writeup.py    the printed table, plots and BENCHMARKS.md
    soak.py       the node under a publisher for an hour: memory, latency, drops (its own command)
"""
