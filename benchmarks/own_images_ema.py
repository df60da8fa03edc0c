"""Which ``--ema-decay`` suits a short run: the own-images recipe of docs/cli.md, replayed with several EMAs at once.

A run's training is a function of its configuration and seed, and the EMA does not feed back into it. So this
script replays a finished ``ppl-diffusion train`` run from its ``config.json`` step for step (the same held-out
examples, batches, noise and dropout masks, hence the same raw weights: checked bit for bit against the run's
last checkpoint, and the run's own EMA against ours of its decay), keeping one EMA of the weights per decay of
``--decays``. At each step of ``--at`` it scores the raw weights and every EMA by the run's validation estimate
(the figure ``--val-examples`` keeps best.pt by: the same held-out examples, noise and steps t for all of them,
so the differences between decays are not blurred by Monte-Carlo noise).

    python benchmarks/own_images_ema.py runs/own --decays 0.99,0.995,0.998,0.999 --at 500,1000,1500 --threads 1

Writes ``--out``/own_images_ema.json and prints a Markdown table (benchmarks/results/own_images.md quotes it).
Costs one more training of the run (same thread count as the run, for bit-identical weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint
from ppl_diffusion.data import load_dataset
from ppl_diffusion.train import BatchStream, TrainConfig, lr_at, make_trainer
from ppl_diffusion.train.validation import Validation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimators import machine_info  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder trained with --val-examples")
    p.add_argument("--decays", type=_floats, default=[0.99, 0.995, 0.998, 0.999])
    p.add_argument("--at", type=_ints, default=None, help="steps to score at (default: the run's last step)")
    p.add_argument("--threads", type=int, default=1, help="torch threads: the run's, for the same weights")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    run = Path(args.run)
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text())).validate()
    if not config.val_examples:
        p.error(f"{run} was trained without --val-examples: there is no held-out set to score the EMAs on")
    final = load_checkpoint(latest_checkpoint(run))
    steps = int(final["step"])
    at = sorted(set(args.at or [steps]))
    if at[-1] > steps:
        p.error(f"--at {at[-1]} is beyond the run's last checkpoint (step {steps})")

    dataset = load_dataset(config.data, config.data_root) if config.data_root else load_dataset(config.data)
    validation = Validation(config, dataset, torch.device("cpu"))  # before the trainer, as train() builds them
    trainer = make_trainer(config, validation.dataset, torch.device("cpu"))
    batches = BatchStream(len(validation.dataset.train), config.seed)
    emas = {d: {k: v.detach().clone() for k, v in trainer.net.state_dict().items()} for d in args.decays}

    rows, started = [], time.monotonic()
    for step in range(1, at[-1] + 1):
        trainer.step(batches.next(config.batch_size), lr_at(config, step))
        with torch.no_grad():
            for decay, ema in emas.items():  # as the trainer updates its own EMA
                for k, v in trainer.net.state_dict().items():
                    ema[k].lerp_(v, 1.0 - decay) if ema[k].is_floating_point() else ema[k].copy_(v)
        if step in at:
            row = {"step": step, "raw": validation.estimate({"ema": trainer.net.state_dict()}),
                   **{str(d): validation.estimate({"ema": ema}) for d, ema in emas.items()}}
            rows.append(row)
            print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "step"), flush=True)
    seconds = time.monotonic() - started

    check = {}
    if at[-1] == steps:  # the replay is the run: its raw weights and its own EMA, bit for bit
        check["raw_equal"] = all(torch.equal(v, final["model"][k]) for k, v in trainer.net.state_dict().items())
        if config.ema_decay in emas:
            check["ema_equal"] = all(torch.equal(v, final["ema"][k]) for k, v in emas[config.ema_decay].items())
        print(f"replay against {run}'s step-{steps} checkpoint: " + ", ".join(f"{k} {v}" for k, v in check.items()))

    result = {"run": str(run), "config": config.to_dict(), "decays": args.decays, "rows": rows, "check": check,
              "threads": args.threads, "seconds": round(seconds, 1), "machine": machine_info(),
              "command": "python benchmarks/own_images_ema.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "own_images_ema.json").write_text(json.dumps(result, indent=2) + "\n")
    header = ["step", "raw", *(f"EMA {d:g}" for d in args.decays)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print(f"| {row['step']} | " + " | ".join(f"{row[k]:.4f}" for k in ["raw", *map(str, args.decays)]) + " |")
    return result


if __name__ == "__main__":
    main()
