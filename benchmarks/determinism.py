"""What the MKL warm-up of ``ppl_diffusion.determinism`` costs: its one call per process against a training step.

Each of ``--processes`` fresh processes imports torch, then times ``determinism.warm_up()`` cold (the module loaded
from its file, so nothing else of the package has run: every VML function's first call is the warm-up's), then
trains the 8-Gaussians MLP of issue 19's command (T = 100, batch 128) for ``--steps`` steps and reads the
mean step time from its own clock (steps 1..N). A training step runs the same code with or without the warm-up (no call
site changed; the warm-up only makes the first VML call of each function happen earlier, in one thread), so its
cost is the warm-up's time, once per process. Rerun::

    python benchmarks/determinism.py --threads 1  # ~1 minute; writes benchmarks/results/determinism.{md,json}
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from distributed import cpu_name  # noqa: E402  (benchmarks/distributed.py: the CPU's model name)


def one_process(steps: int) -> dict:
    """In this (fresh) process: the cold warm-up's seconds, then the mean seconds of a training step."""
    import torch

    torch.ones(1).add_(1)  # torch's own lazy start-up, not the warm-up's
    spec = importlib.util.spec_from_file_location("determinism_alone", REPO / "ppl_diffusion" / "determinism.py")
    module = importlib.util.module_from_spec(spec)
    t0 = time.perf_counter()
    spec.loader.exec_module(module)  # runs warm_up() as the package's import does
    warm = time.perf_counter() - t0

    sys.path.insert(0, str(REPO))
    import tempfile

    from ppl_diffusion.train import TrainConfig, train

    config = TrainConfig(data="eight_gaussians", net="mlp", T=100, steps=steps, lr=1e-3, warmup_steps=10,
                         checkpoint_every=10 * steps, log_every=1)
    with tempfile.TemporaryDirectory() as run:
        train(config, run, progress=False)
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    clock = [r["elapsed"] for r in rows if "elapsed" in r]
    step = (clock[-1] - clock[0]) / (len(clock) - 1)  # the clock is logged to the millisecond
    return {"warm_up_s": warm, "step_s": step, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the processes (torch's default)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.steps)))
        return
    runs = []
    for _ in range(args.processes):
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    warm = statistics.median(r["warm_up_s"] for r in runs)
    step = statistics.median(r["step_s"] for r in runs)
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "benchmarks/determinism.py", *sys.argv[1:]]),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": runs[0]["threads"],
                          "torch": __import__("torch").__version__},
              "runs": runs, "warm_up_ms": 1e3 * warm, "step_ms": 1e3 * step, "warm_up_in_steps": warm / step}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "determinism.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# The MKL warm-up's cost (ppl_diffusion.determinism)", "",
        f"{result['date']}, `{result['command']}`; {m['cpu']}, {m['cores']} cores, threads: {m['threads']}, "
        f"torch {m['torch']}. Medians over {len(runs)} fresh processes.", "",
        "| | ms |", "|---|---|",
        f"| `warm_up()`, once per process (cold: every VML function's first call) | {result['warm_up_ms']:.2f} |",
        f"| a training step of the issue's command (8-Gaussians MLP, T = 100, batch 128) | {result['step_ms']:.2f} |",
        "",
        f"The warm-up costs {result['warm_up_in_steps']:.2g} of a training step, once per process; a step itself runs "
        "the same code as before.", ""]
    (out / "determinism.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
