"""VDM's own code (google-research/vdm) on the digits at the peer's budget: the peer row of issue 20's ablation.

The peer's code is not in this repository: fetch google-research/vdm (commit ``dc27b98a554f``, 2022-09-20) and
pass its folder as ``--vdm``. This driver loads ``model_vdm.py`` (the model, the loss terms, the score U-Net, the
noise schedule, the decoder) and ``train_state.py`` (its Adam-W step with EMA) from that folder and runs them on
the project's digits; ``experiment.py`` / ``experiment_vdm.py`` (TPU ``pmap`` harness with clu, TensorFlow
datasets) are not importable here, so the few lines of them that carry math (the learning-rate schedule, the
optimizer and its weight-decay mask, ``loss_fn``, ``train_step``) are re-typed below, line for line, with their
``pmap``/``pmean``/``scan`` removed (one device).

Changes to the peer's code, each applied as an exact text substitution that must match once (``PATCHES``):

1. ``train_state.py``: ``jax.tree_multimap`` -> ``jax.tree_util.tree_map`` (removed from JAX in 0.3.16).
2. ``model_vdm.py``, ``EncDec.decode``: ``jnp.repeat(x_vals, 3, 1)`` -> ``jnp.repeat(x_vals, z.shape[-1], 1)``.
   The categorical decoder hard-codes CIFAR's 3 channels; on 1-channel digits the broadcast would score every
   pixel three times (the reconstruction term × 3). Identical for 3 channels.
3. ``chex`` (used only for the ``chex.Array`` annotations of ``VDMOutput``) is not installed: a stand-in module
   with ``Array = jax.Array`` is registered when the import fails.
4. In the re-typed ``get_optimizer``: the weight-decay mask is returned as a plain ``dict`` when the parameters
   are one (Flax >= 0.7's ``init`` returns dicts; a ``FrozenDict`` mask no longer matches their tree).

Nothing else: the bound (``loss_recon + loss_klz + loss_diff``, continuous time ``sm_n_timesteps = 0``), its
rescaling to bits/dim (``1 / (H·W·C · ln 2)``, here D = 64), antithetic t, the learned scalar γ endpoints
(γ_min −13.3, γ_max 5.0 initially), Fourier features 2^6, 2^7, the ScoreUNet with dropout 0.1, AdamW
(b1 0.9, b2 0.99, eps 1e-8, weight decay 0.01 on all but biases), a linear warm-up then a constant rate, all
are theirs. Chosen for the budget (``configs/cifar10.py`` is for 10M steps on a TPU pod): the width and depth of
the ScoreUNet (≤ 4.3M parameters), 2,270 steps of batch 128, the learning rate and warm-up (``--lr``,
``--warmup``), EMA 0.998 instead of 0.9999 (a 0.9999 average over 2,270 steps keeps 80% of the initial weights).

The data: scikit-learn's digits as 8-bit pixels rint(v·255/16) in NHWC ``[N x 8 x 8 x 1]`` uint8 (VDM's
``vocab_size`` 256), split by ``train_test_split(test_size=0.2, random_state=0)``; asserted equal to
``ppl_diffusion.data.load_digits()`` mapped back by ``to_uint8``. Conditioning is zero, as VDM's unconditional
CIFAR-10 pipeline. Training batches: the train split reshuffled every epoch from ``--seed``, batches crossing
epoch boundaries (as VDM's repeated, shuffled tf.data stream).

Evaluation: VDM's bound on the 360 test digits with the EMA parameters (``deterministic=True``, as its
``eval_step``), each term per digit. Every digit is run through VDM's own ``__call__`` R times on a batch of M
copies of itself, so its antithetic sampling puts the M times of each call on the grid t0 + k/M (one uniform
offset per call): the diffusion term of a digit is the mean of R·M low-discrepancy draws. Reported: each term's
mean over the digits ± its standard error over the digits, and separately the Monte-Carlo standard error of the
mean (t and ε draws), from the spread of the R independent replicates of each digit:
SE_mc = sqrt(Σ_i s_i² / R) / N.

Bits/dim: VDM's ``loss_fn`` divides the nats of each term by ``prod(images.shape[1:]) · ln 2`` = 64 ln 2 for the
digits; ``loss_recon`` is −log of a categorical over the 256 values of each uint8 pixel, so the sum is an upper
bound on −log₂ P(v)/D for the discrete 8-bit image v, the same quantity as the project's −ELBO/(D ln 2) with the
256-bin discretized decoder (D = 64). The two map pixels to [−1, 1] differently (VDM: (2v + 1)/256 − 1, the
project: v/127.5 − 1), which does not matter for a probability mass on the same 256 values.

Run (``nice``; on 2 shared CPU cores a step takes seconds, see the results)::

    python benchmarks/vdm_peer.py run --vdm /work/peers/vdm/src --run-dir /work/peers/vdm/runs/lr5e-4 --lr 5e-4
    python benchmarks/vdm_peer.py run --vdm ... --run-dir /tmp/vdm-smoke --steps 20 --eval-digits 8  # smoke test
    python benchmarks/vdm_peer.py report /work/peers/vdm/runs/lr5e-4 /work/peers/vdm/runs/lr2e-4

``run`` trains (resuming from ``RUN_DIR/state.pkl`` if present; a checkpoint every 250 steps), evaluates, and
writes ``RUN_DIR/result.json``; ``report`` gathers runs into ``benchmarks/results/vdm_peer.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import math
import pickle
import shlex
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

VDM_COMMIT = "dc27b98a554f65cdc654b800da5aa1846545d41b"
# git blob ids of the two files at VDM_COMMIT (git ls-tree); checked so a result names the code it ran
BLOBS = {"model_vdm.py": "29f032e3c80ff6f2416117be4bdded7ff8eb2dce",
         "train_state.py": "00f09fff5b3354999ff458a17d87f8a6497d251d"}
PATCHES = {
    "train_state.py": [("jax.tree_multimap(", "jax.tree_util.tree_map(",
                        "jax.tree_multimap was removed in JAX 0.3.16")],
    "model_vdm.py": [("x_vals = jnp.repeat(x_vals, 3, 1)", "x_vals = jnp.repeat(x_vals, z.shape[-1], 1)",
                      "the decoder hard-codes 3 channels; 1-channel digits would be scored 3 times")],
}
CHANGES = [
    "train_state.py: jax.tree_multimap -> jax.tree_util.tree_map (removed in JAX 0.3.16)",
    "model_vdm.py EncDec.decode: jnp.repeat(x_vals, 3, 1) -> jnp.repeat(x_vals, z.shape[-1], 1) (CIFAR's 3 channels "
    "hard-coded; on 1-channel digits the reconstruction term would count every pixel 3 times)",
    "chex (only the chex.Array annotations of VDMOutput) not installed: stand-in module with Array = jax.Array",
    "experiment.py get_optimizer (re-typed): the weight-decay mask is a plain dict when params are "
    "(Flax >= 0.7 init returns dicts)",
    "experiment.py / experiment_vdm.py (clu, TensorFlow, pmap) not imported: get_lr_schedule, get_optimizer, "
    "loss_fn and train_step re-typed without pmap/pmean/lax.scan (one device); data from numpy, not tf.data",
]
D = 64  # 8 x 8 x 1
TEST_DIGITS = 360


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_peer(vdm_dir: Path):
    """(model_vdm, train_state) modules from the fetched folder, with ``PATCHES`` applied."""
    import jax

    try:
        import chex  # noqa: F401
    except ImportError:
        sys.modules["chex"] = types.SimpleNamespace(Array=jax.Array)
    mods, blobs = {}, {}
    for name in ("model_vdm.py", "train_state.py"):
        path = vdm_dir / name
        if not path.is_file():
            raise SystemExit(f"vdm_peer: error: {path} not found; pass --vdm the folder of a google-research/vdm "
                             f"checkout (commit {VDM_COMMIT[:12]})")
        raw = path.read_bytes()
        blobs[name] = git_blob(raw)
        src = raw.decode()
        for old, new, _why in PATCHES[name]:
            if src.count(old) != 1:
                raise SystemExit(f"vdm_peer: error: {name} has {src.count(old)} copies of {old!r}, expected 1; "
                                 f"use VDM commit {VDM_COMMIT[:12]}")
            src = src.replace(old, new)
        modname = "vdm_peer_" + name[:-3]
        spec = importlib.util.spec_from_loader(modname, loader=None, origin=str(path))
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = str(path)
        sys.modules[modname] = mod
        exec(compile(src, str(path), "exec"), mod.__dict__)
        mods[name] = mod
    return mods["model_vdm.py"], mods["train_state.py"], blobs


def digits_uint8():
    """(train, test) uint8 ``[N x 8 x 8 x 1]``: VDM's input format, asserted equal to the project's split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    from ppl_diffusion.data import load_digits, to_uint8

    raw = sk_load_digits()
    pixels = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    train, test = train_test_split(pixels, test_size=0.2, random_state=0)
    ds = load_digits()
    for ours, theirs in ((train, ds.train), (test, ds.test)):
        mapped = to_uint8(theirs).permute(0, 2, 3, 1).numpy()  # [N x 1 x 8 x 8] -> NHWC
        assert mapped.shape == ours.shape and np.array_equal(mapped, ours), "digits split differs from the project's"
    assert test.shape == (TEST_DIGITS, 8, 8, 1) and train.shape == (1437, 8, 8, 1)
    return train, test


def model_config(model_vdm, args):
    """VDM's ``configs/cifar10.py`` model block, with the ScoreUNet sized for the budget."""
    return model_vdm.VDMConfig(
        vocab_size=256, sample_softmax=False, antithetic_time_sampling=True, with_fourier_features=True,
        with_attention=False, gamma_type="learnable_scalar", gamma_min=-13.3, gamma_max=5.0,
        sm_n_timesteps=0, sm_n_embd=args.n_embd, sm_n_layer=args.n_layer, sm_pdrop=args.pdrop)


# ---- re-typed from experiment.py / experiment_vdm.py (line for line; pmap, pmean and scan removed) ----
def get_lr_schedule(learning_rate, num_steps_lr_warmup):
    import optax

    return optax.linear_schedule(init_value=0.0, end_value=learning_rate, transition_steps=num_steps_lr_warmup)


def get_optimizer(lr):
    import flax
    import optax
    from flax.core.frozen_dict import FrozenDict, unfreeze

    def decay_mask_fn(params):
        flat_params = flax.traverse_util.flatten_dict(unfreeze(params))
        flat_mask = {path: (path[-1] != "bias" and path[-2:] not in [("layer_norm", "scale"),
                                                                     ("final_layer_norm", "scale")])
                     for path in flat_params}
        mask = flax.traverse_util.unflatten_dict(flat_mask)
        return FrozenDict(mask) if isinstance(params, FrozenDict) else mask  # port: plain dicts since Flax 0.7

    return optax.adamw(learning_rate=lr, mask=decay_mask_fn, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01)


def make_loss_fn(apply_fn):
    import jax
    import jax.numpy as jnp

    def loss_fn(params, inputs, rng, is_train):
        rng, sample_rng = jax.random.split(rng)
        rngs = {"sample": sample_rng}
        if is_train:
            rng, dropout_rng = jax.random.split(rng)
            rngs["dropout"] = dropout_rng
        outputs = apply_fn(variables={"params": params}, **inputs, rngs=rngs, deterministic=not is_train)
        rescale_to_bpd = 1. / (np.prod(inputs["images"].shape[1:]) * np.log(2.))
        bpd_latent = jnp.mean(outputs.loss_klz) * rescale_to_bpd
        bpd_recon = jnp.mean(outputs.loss_recon) * rescale_to_bpd
        bpd_diff = jnp.mean(outputs.loss_diff) * rescale_to_bpd
        bpd = bpd_recon + bpd_latent + bpd_diff
        scalars = {"bpd": bpd, "bpd_latent": bpd_latent, "bpd_recon": bpd_recon, "bpd_diff": bpd_diff,
                   "var0": outputs.var_0, "var": outputs.var_1}
        return bpd, scalars

    return loss_fn


def make_train_step(loss_fn, lr_schedule, ema_rate, base_rng):
    import jax

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, 0)  # experiment.py: fold_in(base_rng, axis_index('batch')), one device
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, batch, rng=rng, is_train=True)
        learning_rate = lr_schedule(state.step)
        new_state = state.apply_gradients(grads=grads, lr=learning_rate, ema_rate=ema_rate)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)
# ---- end of the re-typed code ----


def batch_indices(n_train: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """``[steps x batch]`` train indices: an endless stream of per-epoch permutations, cut into batches."""
    need = steps * batch
    perms = [np.random.default_rng([seed, epoch]).permutation(n_train) for epoch in range(-(-need // n_train))]
    return np.concatenate(perms)[:need].reshape(steps, batch)


def build(args):
    import jax
    import jax.numpy as jnp

    model_vdm, train_state, blobs = load_peer(Path(args.vdm))
    config = model_config(model_vdm, args)
    model = model_vdm.VDM(config)
    # Experiment.__init__: PRNGKey(seed) -> data rng, model rng; get_model_and_params splits the model rng
    rng = jax.random.PRNGKey(args.seed)
    rng, _data_rng = jax.random.split(rng)
    rng, model_rng = jax.random.split(rng)
    rng1, rng2 = jax.random.split(model_rng)
    inputs = {"images": jnp.zeros((2, 8, 8, 1), "uint8"), "conditioning": jnp.zeros((2,))}
    variables = model.init({"params": rng1, "sample": rng2}, **inputs)
    state = train_state.TrainState.create(apply_fn=model.apply, variables=variables, optax_optimizer=get_optimizer)
    rng, train_rng = jax.random.split(rng)
    rng, eval_rng = jax.random.split(rng)
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])))
    return model, state, train_rng, eval_rng, n_params, blobs


def save_state(path: Path, state, extra: dict) -> None:
    import jax

    blob = {"step": int(state.step), "params": jax.device_get(state.params),
            "ema_params": jax.device_get(state.ema_params), "opt_state": jax.device_get(state.opt_state), **extra}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(blob, f)
    tmp.replace(path)


def train(args, model, state, train_rng, train_x, log):
    import jax
    import jax.numpy as jnp

    run_dir = Path(args.run_dir)
    ckpt = run_dir / "state.pkl"
    history, seconds_before = [], 0.0
    if ckpt.exists():
        blob = pickle.loads(ckpt.read_bytes())
        state = state.replace(step=jnp.asarray(blob["step"]), params=blob["params"], ema_params=blob["ema_params"],
                              opt_state=jax.tree_util.tree_map(jnp.asarray, blob["opt_state"]))
        history, seconds_before = blob["history"], blob["train_seconds"]
        log(f"resumed at step {blob['step']} from {ckpt}")
    step0 = int(state.step)
    loss_fn = make_loss_fn(model.apply)
    step_fn = make_train_step(loss_fn, get_lr_schedule(args.lr, args.warmup), args.ema, train_rng)
    idx = batch_indices(len(train_x), args.steps, args.batch, args.seed)
    cond = jnp.zeros((args.batch,), "uint8")
    t_start, t_prev, acc = time.time(), time.time(), []
    for step in range(step0, args.steps):
        batch = {"images": jnp.asarray(train_x[idx[step]]), "conditioning": cond}
        state, metrics = step_fn(state, batch)
        acc.append(metrics)
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            m = {k: float(np.mean([np.asarray(a[k]) for a in acc])) for k in acc[0]}
            now = time.time()
            m.update(step=done, s_per_step=(now - t_prev) / len(acc))
            history.append(m)
            log(f"step {done} bpd {m['bpd']:.4f} (recon {m['bpd_recon']:.4f} klz {m['bpd_latent']:.5f} "
                f"diff {m['bpd_diff']:.4f}) var0 {m['var0']:.3g} var1 {m['var']:.4f} {m['s_per_step']:.2f} s/step")
            acc, t_prev = [], now
        if done % args.checkpoint_every == 0 or done == args.steps:
            save_state(ckpt, state, {"history": history, "args": vars(args),
                                     "train_seconds": seconds_before + time.time() - t_start})
    return state, history, seconds_before + time.time() - t_start, step0


def evaluate(args, model, params, eval_rng, test_x, log):
    """Per-digit terms (nats) ``[N x R]`` for recon, klz, diff: R calls of VDM on M copies of each digit."""
    import jax
    import jax.numpy as jnp

    R, M, G = args.eval_reps, args.eval_draws, args.eval_group

    def one(digit, rng):  # VDM's own __call__ on M copies: antithetic t on the grid t0 + k/M
        out = model.apply({"params": params}, images=jnp.repeat(digit[None], M, 0),
                          conditioning=jnp.zeros((M,)), rngs={"sample": rng}, deterministic=True)
        return jnp.stack([out.loss_recon.mean(), out.loss_klz.mean(), out.loss_diff.mean()])

    f = jax.jit(jax.vmap(one))
    n = len(test_x)
    terms = np.zeros((n, R, 3))
    t0 = time.time()
    for r in range(R):
        for lo in range(0, n, G):
            hi = min(n, lo + G)
            digits = np.zeros((G, 8, 8, 1), np.uint8)
            digits[:hi - lo] = test_x[lo:hi]
            keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(eval_rng, r), i) for i in range(lo, lo + G)])
            terms[lo:hi, r] = np.asarray(f(jnp.asarray(digits), keys))[:hi - lo]
        log(f"eval replicate {r + 1}/{R}: {time.time() - t0:.0f} s")
    return terms, time.time() - t0


def summarise(terms: np.ndarray) -> dict:
    """bits/dim of each term and the total: mean over digits, SE over digits, Monte-Carlo SE of the mean."""
    bpd = terms / (D * math.log(2))  # [N x R x 3]
    parts = {"recon": bpd[..., 0], "klz": bpd[..., 1], "diff": bpd[..., 2], "total": bpd.sum(-1)}
    n, R = bpd.shape[:2]
    out = {}
    for name, x in parts.items():  # x: [N x R]
        per_digit = x.mean(1)
        mc_var = x.var(1, ddof=1).sum() / R / n ** 2 if R > 1 else float("nan")
        out[name] = {"bpd": float(per_digit.mean()), "se_over_digits": float(per_digit.std(ddof=1) / math.sqrt(n)),
                     "se_monte_carlo": float(math.sqrt(mc_var))}
    return out


def cmd_run(args) -> None:
    import jax

    from distributed import cpu_name

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logf = open(run_dir / "log.txt", "a")

    def log(msg):
        line = f"{dt.datetime.now().strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    train_x, test_x = digits_uint8()
    model, state, train_rng, eval_rng, n_params, blobs = build(args)
    log(f"command: {shlex.join(sys.argv)}")
    log(f"ScoreUNet sm_n_embd {args.n_embd} sm_n_layer {args.n_layer}: {n_params:,} parameters; blobs {blobs}")
    if n_params > args.max_params:
        raise SystemExit(f"vdm_peer: error: {n_params:,} parameters exceed --max-params {args.max_params:,}; "
                         f"lower --n-embd or --n-layer")
    if args.steps * args.batch > 2270 * 128:
        raise SystemExit(f"vdm_peer: error: {args.steps} steps of batch {args.batch} exceed the budget 2,270 x 128")
    state, history, wall, step0 = train(args, model, state, train_rng, train_x, log)
    log(f"trained to step {args.steps} (this session from {step0}); {wall:.0f} s of training in all")
    test = test_x[:args.eval_digits] if args.eval_digits else test_x
    results = {}
    for which in args.eval_params:
        params = state.ema_params if which == "ema" else state.params
        terms, secs = evaluate(args, model, params, eval_rng, test, log)
        np.save(run_dir / f"terms_{which}.npy", terms)
        results[which] = {**summarise(terms), "seconds": round(secs, 1)}
        r = results[which]
        log(f"{which}: {r['total']['bpd']:.4f} ± {r['total']['se_over_digits']:.4f} (over digits), "
            f"MC SE {r['total']['se_monte_carlo']:.5f}; recon {r['recon']['bpd']:.4f} klz {r['klz']['bpd']:.6f} "
            f"diff {r['diff']['bpd']:.4f}")
    gamma = state.ema_params["gamma"]
    g0, g1 = float(gamma["b"][0]), float(gamma["b"][0] + abs(gamma["w"][0]))
    train_seconds = wall  # all sessions of training, resumed ones included
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv),
        "machine": {"cpu": cpu_name(), "cores": __import__("os").cpu_count(), "jax": jax.__version__,
                    "flax": __import__("flax").__version__, "optax": __import__("optax").__version__},
        "vdm_commit": VDM_COMMIT, "vdm_blobs": blobs, "vdm_blobs_match_commit": blobs == BLOBS,
        "changes": CHANGES,
        "config": {"sm_n_embd": args.n_embd, "sm_n_layer": args.n_layer, "sm_pdrop": args.pdrop,
                   "gamma_type": "learnable_scalar", "gamma_min_init": -13.3, "gamma_max_init": 5.0,
                   "sm_n_timesteps": 0, "with_fourier_features": True, "with_attention": False,
                   "antithetic_time_sampling": True, "optimizer": "adamw b1 0.9 b2 0.99 eps 1e-8 wd 0.01",
                   "lr": args.lr, "warmup": args.warmup, "lr_decay": False, "ema_rate": args.ema,
                   "batch": args.batch, "steps": args.steps, "seed": args.seed},
        "parameters": n_params, "train_seconds": round(train_seconds, 1),
        "s_per_step": round(train_seconds / max(args.steps, 1), 3),
        "gamma_0_ema": g0, "gamma_1_ema": g1,
        "eval": {"digits": len(test), "reps": args.eval_reps, "draws_per_rep": args.eval_draws, **results},
        "history": history,
    }
    (run_dir / "result.json").write_text(json.dumps(out, indent=1))
    log(f"wrote {run_dir / 'result.json'}")


def cmd_report(args) -> None:
    runs = [json.loads((Path(r) / "result.json").read_text()) for r in args.run_dirs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
    r0 = runs[0]
    lines = ["# VDM's own code on the digits at the peer's budget", "",
             f"google-research/vdm at `{r0['vdm_commit']}` (blobs match: {r0['vdm_blobs_match_commit']}), "
             f"`model_vdm.py` and `train_state.py` run by `benchmarks/vdm_peer.py`. Machine: {r0['machine']['cpu']}, "
             f"{r0['machine']['cores']} cores, JAX {r0['machine']['jax']}, Flax {r0['machine']['flax']}, "
             f"optax {r0['machine']['optax']}.", "",
             f"Bound in bits/dim on the {r0['eval']['digits']} test digits, continuous time (T = ∞), learned γ "
             "endpoints; ± is the SE over digits, MC the Monte-Carlo SE of the mean (t and ε draws).", "",
             "| lr | warm-up | EMA | params | weights | steps × batch | train min | s/step | bound (bits/dim) | MC SE | "
             "recon | klz | diff | γ_0, γ_1 (EMA) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, which in ((r, w) for r in runs for w in ("ema", "raw") if w in r["eval"]):
        c, e = r["config"], r["eval"][which]
        lines.append(
            f"| {c['lr']:g} | {c['warmup']} | {c['ema_rate']} | {r['parameters']:,} | {which} | "
            f"{c['steps']} × {c['batch']} | "
            f"{r['train_seconds'] / 60:.0f} | {r['s_per_step']:.2f} | **{e['total']['bpd']:.3f} ± "
            f"{e['total']['se_over_digits']:.3f}** | {e['total']['se_monte_carlo']:.4f} | "
            f"{e['recon']['bpd']:.4f} ± {e['recon']['se_over_digits']:.4f} | {e['klz']['bpd']:.2e} | "
            f"{e['diff']['bpd']:.3f} ± {e['diff']['se_over_digits']:.3f} | {r['gamma_0_ema']:.2f}, "
            f"{r['gamma_1_ema']:.2f} |")
    lines += ["", f"Each digit: {r0['eval']['reps']} replicates × {r0['eval']['draws_per_rep']} antithetic t "
              "(VDM's own sampling on a batch of copies of the digit).", "", "Commands:", ""]
    lines += [f"    {r['command']}" for r in runs]
    lines += ["", "Changes to VDM's code (everything else, the math included, is theirs):", ""]
    lines += [f"- {c}" for c in r0["changes"]]
    lines += ["", "Chosen for the budget: ScoreUNet width/depth (≤ 4.3M parameters), 2,270 × 128, lr and warm-up, "
              "EMA 0.998 (their 0.9999 would keep 80% of the initial weights after 2,270 steps). Their config: "
              "lr 2e-4, warm-up 100, no decay, EMA 0.9999, sm_n_embd 128, sm_n_layer 32, 10M steps.", "",
              "Bits/dim: VDM divides each term's nats by H·W·C·ln 2 (= 64 ln 2); its recon term is a categorical "
              "over the 256 values of each uint8 pixel, so the total bounds −log₂ P(v)/64 for the discrete image, "
              "the same quantity as the project's −ELBO/(D ln 2) with the 256-bin discretized decoder."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train (or resume) and evaluate one configuration")
    r.add_argument("--vdm", required=True, help="folder of a google-research/vdm checkout (model_vdm.py)")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--lr", type=float, default=5e-4)
    r.add_argument("--warmup", type=int, default=100)
    r.add_argument("--ema", type=float, default=0.998)
    r.add_argument("--steps", type=int, default=2270)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--n-embd", type=int, default=128, help="sm_n_embd (their 128)")
    r.add_argument("--n-layer", type=int, default=2, help="sm_n_layer (their 32; 2 fits 4.3M at width 128)")
    r.add_argument("--pdrop", type=float, default=0.1, help="sm_pdrop (their 0.1)")
    r.add_argument("--max-params", type=int, default=4_300_000)
    r.add_argument("--seed", type=int, default=1, help="their config's seed 1")
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--checkpoint-every", type=int, default=250)
    r.add_argument("--eval-params", nargs="+", default=["ema"], choices=["ema", "raw"])
    r.add_argument("--eval-reps", type=int, default=4, help="R independent calls per test digit")
    r.add_argument("--eval-draws", type=int, default=50, help="M antithetic t per call")
    r.add_argument("--eval-group", type=int, default=4, help="digits per jitted call (memory only)")
    r.add_argument("--eval-digits", type=int, default=0, help="first N test digits only (smoke tests); 0: all 360")
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("report", help="gather runs into benchmarks/results/vdm_peer.{json,md}")
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vdm_peer"))
    q.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
