"""Where the digits U-Net's time goes in JAX on a CPU (issue 6's question (iii)); the figures behind the
notes of results/backends.md.

Digits U-Net (preset, zero_init=False, eval mode so dropout is off in both), batch 128: jitted Flax
value_and_grad of mean(out²) w.r.t. the params vs PyTorch forward + backward of the same loss, in one
process, round-robin (every variant and torch once per round), median over REPS rounds after warm-up.
Prints one line per variant and appends them to results/unet_jax_cpu.txt.

    python benchmarks/unet_jax_cpu.py [variant ...]        # default: all in-process variants
    XLA_FLAGS=... python benchmarks/unet_jax_cpu.py base   # flag variants need their own process

Variants patch the Flax layers only while their step is traced (jit traces on the first call).
"""
import contextlib, math, os, statistics, sys, time

import jax, jax.numpy as jnp, numpy as np, torch
from flax import nnx

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import ppl_diffusion.numpyro.nets as N  # noqa: E402
from ppl_diffusion.nets.unet import unet_preset as torch_preset  # noqa: E402
from ppl_diffusion.numpyro.convert import flax_twin  # noqa: E402

REPS, B = int(os.environ.get("REPS", 5)), 128
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", 2)))


@contextlib.contextmanager
def patch(obj, name, fn):
    old = getattr(obj, name)
    setattr(obj, name, fn)
    try:
        yield
    finally:
        setattr(obj, name, old)


def attn_dot(self, x):  # heads as a batch axis, dot_general instead of einsum
    n, h, w, c = x.shape
    d = c // self.num_heads
    qkv = self.qkv(self.norm(x)).reshape(n, h * w, 3, self.num_heads, d).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, L, d)
    wts = jax.nn.softmax(jax.lax.dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1)))) / math.sqrt(d), axis=-1)
    a = jax.lax.dot_general(wts, v, (((3,), (2,)), ((0, 1), (0, 1))))
    return x + self.proj_out(a.transpose(0, 2, 1, 3).reshape(n, h, w, c))


def attn_sdpa(self, x):  # jax.nn.dot_product_attention (XLA implementation on CPU)
    n, h, w, c = x.shape
    d = c // self.num_heads
    qkv = self.qkv(self.norm(x)).reshape(n, h * w, 3, self.num_heads, d)
    a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return x + self.proj_out(a.reshape(n, h, w, c))


def gn_own(self, x):  # GroupNorm by a reshape to groups, instead of nnx's jnp.repeat of the statistics
    shp, g = x.shape, self.num_groups
    xg = x.reshape(shp[:-1] + (g, shp[-1] // g))
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 2, 4), keepdims=True)
    return ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(shp) * self.scale[...] + self.bias[...]


def conv_nchw(self, x):  # each conv in NCHW / OIHW via dimension numbers, transposing around it
    y = jax.lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(self.kernel[...], (3, 2, 0, 1)),
                                     (self.strides,) * 2 if isinstance(self.strides, int) else self.strides,
                                     self.padding, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jnp.transpose(y, (0, 2, 3, 1)) + self.bias[...]


VARIANTS = {
    "base": [],
    "highest": [("precision", "highest")],
    "attn_dot": [(N.AttentionBlock, "__call__", attn_dot)],
    "attn_sdpa": [(N.AttentionBlock, "__call__", attn_sdpa)],
    "gn_own": [(nnx.GroupNorm, "__call__", gn_own)],
    "conv_nchw": [(nnx.Conv, "__call__", conv_nchw)],
}

torch.manual_seed(0)
tnet = torch_preset("digits", zero_init=False).eval()
jnet = flax_twin(tnet)
graphdef, params, rest = nnx.split(jnet, nnx.Param, ...)
x, t = torch.randn(B, 1, 8, 8), torch.randint(1, 1001, (B,))
jx, jt = jnp.asarray(x.numpy()), jnp.asarray(t.numpy())


def make_step():
    @jax.jit
    def step(params, x, t):
        return jax.value_and_grad(lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p, rest)(x, t))))(params)
    return step


def torch_step():
    tnet.zero_grad(set_to_none=True)
    loss = tnet(x, t).pow(2).mean()
    loss.backward()
    return loss


names = sys.argv[1:] or list(VARIANTS)
steps, info = {}, {}
lt = float(torch_step().detach())
for name in names:
    step = make_step()
    with contextlib.ExitStack() as stack:
        for p in VARIANTS[name]:
            stack.enter_context(jax.default_matmul_precision(p[1]) if p[0] == "precision" else patch(*p))
        t0 = time.perf_counter()
        lj, _ = jax.block_until_ready(step(params, jx, jt))
        info[name] = (time.perf_counter() - t0, abs(float(lj) - lt) / lt)
    steps[name] = step
times = {k: [] for k in [*names, "torch"]}
for r in range(REPS + 1):  # round 0: warm-up
    for name in names:
        s = time.perf_counter(); jax.block_until_ready(steps[name](params, jx, jt)); dt = time.perf_counter() - s
        if r:
            times[name].append(dt)
        s = time.perf_counter(); torch_step(); dt = time.perf_counter() - s
        if r:
            times["torch"].append(dt)
mt = statistics.median(times["torch"]) * 1e3
out = []
print = (lambda line, _p=print: (_p(line), out.append(line)))  # noqa: E731 - print and keep
print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, jax {jax.__version__}, torch {torch.__version__}")
print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  torch {mt:.0f} ms/step (median of {len(times['torch'])}; "
      f"range {min(times['torch']) * 1e3:.0f}-{max(times['torch']) * 1e3:.0f})  load {os.getloadavg()[0]:.1f}")
for name in names:
    m = statistics.median(times[name]) * 1e3
    print(f"  {name:10s} flax {m:6.0f} ms/step (range {min(times[name]) * 1e3:.0f}-{max(times[name]) * 1e3:.0f}), "
          f"flax/torch {m / mt:.2f}, compile {info[name][0]:.1f} s, loss rel. diff {info[name][1]:.1e}")
(REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
with open(REPO / "benchmarks" / "results" / "unet_jax_cpu.txt", "a") as f:
    f.write("\n".join(out) + "\n\n")
