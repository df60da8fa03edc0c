"""Same seed, same bits in any fresh process: every data set and a short training of each, built in several new
processes (and the data with 1 and 2 threads), and MKL's vector-math kernels chosen in one thread at import."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_diffusion import determinism
from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint
from ppl_diffusion.data import DATASETS

from .common import assert_same_state
from .test_data import write_cifar_batch, write_mnist, write_pngs

# One process builds every data set, prints a digest of each, and trains each for a few steps (a tiny MLP, or a
# tiny U-Net for the 8x8 images) into OUT/<name>, the checkpoints compared by the test.
SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path
from ppl_diffusion.data import load_dataset
from ppl_diffusion.train import TrainConfig, train

roots, out = json.loads(sys.argv[1]), sys.argv[2]
digests = {}
for name, root in roots.items():
    d = load_dataset(name, root)
    h = hashlib.sha256()
    for t in (d.train, d.test, d.train_labels, d.test_labels):
        h.update(b"-" if t is None else repr((t.dtype, tuple(t.shape))).encode() + t.contiguous().numpy().tobytes())
    digests[name] = h.hexdigest()
print(json.dumps(digests))
if out == "-":
    sys.exit()
TINY_UNET = dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], num_groups=4)
for name, root in roots.items():
    image8 = name in ("digits", "image_folder")
    net = dict(net="unet", net_config=dict(in_channels=1, image_size=8, **TINY_UNET)) if image8 else dict(net="mlp")
    config = TrainConfig(data=name, data_root=root, T=20, steps=3, batch_size=4, lr=1e-3, warmup_steps=2,
                         checkpoint_every=2, log_every=1, **net)
    train(config, Path(out) / name, progress=False)
"""


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    """Every data set by name, with small fixtures in their on-disk formats for the ones read from files."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    write_mnist(root / "mnist")
    cifar = root / "cifar10" / "cifar-10-batches-bin"
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_batch(cifar / name, rng.integers(0, 256, (2, 3, 32, 32)), rng.integers(0, 10, 2))
    write_pngs(root / "pngs", rng.integers(0, 256, (10, 8, 8)))
    roots = {name: None for name in DATASETS}
    roots.update(mnist=str(root / "mnist"), cifar10=str(root / "cifar10"), image_folder=str(root / "pngs"))
    return roots


def run_concurrently(commands: list[tuple[list[str], int]]) -> list[str]:
    """Each command in its own new process with that many OpenMP threads (passive waiting, so that processes
    sharing the cores do not spin against each other), all at once; their outputs, each checked for success."""
    procs = [subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd, threads in commands]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def test_every_data_set_and_its_training_are_the_same_in_fresh_processes(data_roots, tmp_path):
    """Three fresh processes on 2 threads (where a racy first call of a kernel would show) build every data set
    and train on each: the same data digests and the same final state, every tensor bit for bit; a fourth on 1
    thread builds the same data (the data do not depend on the thread count)."""
    assert set(data_roots) == set(DATASETS)  # every registered data set takes part
    runs = [tmp_path / f"run{i}" for i in range(3)]
    script = [sys.executable, "-c", SCRIPT, json.dumps(data_roots)]
    outputs = run_concurrently([([*script, str(run)], 2) for run in runs] + [([*script, "-"], 1)])
    digests = [json.loads(out.splitlines()[0]) for out in outputs]
    assert set(digests[0]) == set(DATASETS)
    assert all(d == digests[0] for d in digests[1:]), digests
    for name in data_roots:
        states = [load_checkpoint(latest_checkpoint(run / name)) for run in runs]
        assert states[0]["step"] == 3
        for other in states[1:]:
            assert_same_state(states[0], other, where=name)


@pytest.mark.slow
def test_the_issues_command_ends_in_one_state_in_fresh_processes(tmp_path):
    """``ppl-diffusion train --data eight_gaussians --net mlp --T 100 --steps 60 --checkpoint-every 97 --lr 1e-3
    --warmup-steps 10``, run three times in new processes on 2 threads: one final checkpoint, bit for bit."""
    args = ["--data", "eight_gaussians", "--net", "mlp", "--T", "100", "--steps", "60", "--checkpoint-every", "97",
            "--lr", "1e-3", "--warmup-steps", "10", "--no-progress"]
    runs = [tmp_path / f"run{i}" for i in range(3)]
    run_concurrently([([sys.executable, "-m", "ppl_diffusion", "train", *args, "--run-dir", str(run)], 2)
                      for run in runs])
    states = [load_checkpoint(latest_checkpoint(run)) for run in runs]
    assert states[0]["step"] == 60
    for other in states[1:]:
        assert_same_state(states[0], other)


# MKL's name of each function in determinism.VML_FUNCTIONS (vms<Name> in float32, vmd<Name> in float64)
MKL_NAMES = {"acos": "Acos", "asin": "Asin", "atan": "Atan", "cos": "Cos", "erf": "Erf", "erfc": "Erfc",
             "erfinv": "ErfInv", "exp": "Exp", "log": "Ln", "log10": "Log10", "log2": "Log2", "sin": "Sin",
             "sqrt": "Sqrt", "tan": "Tan", "tanh": "Tanh", "trunc": "Trunc"}
VML_SYMBOLS = {f"vm{p}{MKL_NAMES[name]}" for p in "sd" for name in determinism.VML_FUNCTIONS}


def test_the_warmed_functions_are_libtorchs_vml_entry_points():
    """The warm-up ran at import, and its list is exactly the VML functions libtorch_cpu carries (read from its
    dynamic symbols with nm): a torch that hands one more function to MKL fails here."""
    assert determinism._warm and set(determinism.VML_FUNCTIONS) == set(MKL_NAMES)
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not (torch.backends.mkl.is_available() and lib.is_file() and shutil.which("nm")):
        pytest.skip("needs a Linux torch built with MKL and binutils' nm")
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    exported = {s for s in (line.split()[-1] for line in symbols.splitlines()) if re.fullmatch(r"vm[sd][A-Z]\w*", s)}
    assert {s for s in exported if not s.endswith("_64")} == VML_SYMBOLS


GDB_SCRIPT = r"""
set pagination off
set breakpoint pending on
catch load libtorch_cpu
run
rbreak ^vm[sd][A-Z][A-Za-z0-9]*$
commands
silent
printf "VML %d %d ", $_thread, $rdi
info symbol $pc
continue
end
delete 1
continue
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gdb") is None or sys.platform != "linux", reason="needs gdb on Linux x86-64")
def test_every_vml_kernel_is_first_called_in_one_thread(tmp_path):
    """Under gdb, a fresh process that imports ppl_diffusion and trains the 8-Gaussians toy for two steps (data,
    embedding, Adam: VML calls split over 2 threads): the first call of every VML function (vms*/vmd*) is on one
    element in the main thread, i.e. the warm-up's, and every VML function called is one it warms."""
    (tmp_path / "cmds.gdb").write_text(GDB_SCRIPT)
    code = ("from ppl_diffusion.train import TrainConfig, train; import sys; "
            "train(TrainConfig(data='eight_gaussians', net='mlp', T=20, steps=2, batch_size=128), sys.argv[1], "
            "progress=False)")
    done = subprocess.run(["gdb", "-q", "-batch", "-x", str(tmp_path / "cmds.gdb"), "--args", sys.executable, "-c",
                           code, str(tmp_path / "run")], env={**os.environ, "OMP_NUM_THREADS": "2"},
                          capture_output=True, text=True, timeout=900)
    calls = [line.split()[1:4] for line in done.stdout.splitlines() if line.startswith("VML ")]
    if not calls:
        pytest.skip(f"gdb could not break on MKL's VML entry points here: {done.stdout[-500:]} {done.stderr[-500:]}")
    first, threads = {}, set()
    for thread, n, symbol in calls:
        first.setdefault(symbol, (int(thread), int(n)))
        threads.add(int(thread))
    assert len(threads) > 1, "no VML call was split over threads: the check would not see a race"
    assert set(first) == VML_SYMBOLS  # the warm-up's calls and nothing else
    assert all(v == (1, 1) for v in first.values()), {k: v for k, v in first.items() if v != (1, 1)}
