"""Parameter and FLOP counts of the guided icDPM (paper Table 11 convention).

FLOPs are those of ONE denoising step including the guidance network, on a height x width x 3
input, with FLOPs = 2 x multiply-adds:
  Conv2D  2 * H_out * W_out * k_h * k_w * C_in * C_out
  Dense   2 * in * out (per image: the noise-level MLP and each block's FiLM projection)
Biases, normalisation, activations, additions, pooling, upsampling and the sinusoidal
embedding are not counted (they are O(H W C), against O(H W C^2 k^2) for the convolutions).

count()           builds the two Keras models at a static height x width: params are the
                  exact number of model variables, FLOPs are read from every Conv2D / Dense
                  layer's kernel and output shape. Building costs ~5 s per full-size model.
count_analytic()  the same numbers from the architecture's formulas, in microseconds; tests
                  assert it equals count() on every ablation path (trainer/model_test.py).
tf_profiler_flops() TensorFlow's own count (tf.compat.v1.profiler) on the concrete graph of
                  one step, the cross-check of the counter (docs/model.md).
"""
from __future__ import annotations

import math
from typing import Dict

from trainer import experiments
from trainer.model import ModelConfig

# Paper Table 11: params, FLOPs of one step (incl. guidance) on 720 x 1280 x 3.
PAPER_TABLE11 = {
    "icDPM-S": (6e6, 1200e9),
    "icDPM-L": (27e6, 4800e9),
    "S+Guide-S": (10e6, 2500e9),
    "S+Guide-L": (30e6, 6400e9),
    "L+Guide-S": (30e6, 6100e9),
    "L+Guide-L": (52e6, 10000e9),
}


def _conv_flops(h, w, k, cin, cout):
    return 2 * h * w * k * k * cin * cout


def _result(parts: Dict[str, Dict[str, int]], by_type: Dict[str, int]) -> dict:
    return {"params": sum(p["params"] for p in parts.values()),
            "flops": sum(p["flops"] for p in parts.values()),
            "breakdown": {**parts, "flops_by_layer_type": by_type}}


# ----------------------------------------------------------------------------- Keras walk

def _keras_model_counts(model, by_type: Dict[str, int]) -> Dict[str, int]:
    import keras

    flops = 0
    for layer in model.layers:  # our functional models are flat: every layer used once
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            f = 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            f = 2 * cin * cout
        else:
            continue
        by_type[type(layer).__name__] = by_type.get(type(layer).__name__, 0) + int(f)
        flops += int(f)
    params = sum(math.prod(v.shape) for v in model.weights)
    return {"params": int(params), "flops": flops}


def count(cfg: ModelConfig, height: int = 720, width: int = 1280) -> dict:
    """{"params", "flops", "breakdown"} of the built Keras models (see module docstring)."""
    from trainer.model import build_guidance_net, build_unet

    by_type: Dict[str, int] = {}
    parts = {"unet": _keras_model_counts(build_unet(cfg, height, width), by_type)}
    if cfg.guidance != "none":
        parts["guidance_net"] = _keras_model_counts(build_guidance_net(cfg, height, width), by_type)
    return _result(parts, by_type)


# ----------------------------------------------------------------------------- formulas

def count_analytic(cfg: ModelConfig, height: int = 720, width: int = 1280) -> dict:
    """The same numbers as count(), from the architecture of trainer/model.py (no TF)."""
    for side, v in (("height", height), ("width", width)):
        if v <= 0 or v % cfg.multiple:
            raise ValueError(f"{side} {v} is not a positive multiple of {cfg.multiple} "
                             f"(the model's downsampling factor); pad the image first")
    by_type = {"Conv2D": 0, "Dense": 0}
    acc = {"params": 0, "flops": 0}
    norm_params = 0 if cfg.norm == "none" else 2  # GroupNorm, LayerNorm: gamma, beta per channel

    def conv(h, w, k, cin, cout):
        acc["params"] += k * k * cin * cout + cout
        f = _conv_flops(h, w, k, cin, cout)
        acc["flops"] += f
        by_type["Conv2D"] += f

    def dense(cin, cout):
        acc["params"] += cin * cout + cout
        acc["flops"] += 2 * cin * cout
        by_type["Dense"] += 2 * cin * cout

    def res(h, w, cin, cout, emb_dim=None, guide_ch=None):
        acc["params"] += norm_params * (cin + cout)  # two norms (gamma, beta), if any
        acc["params"] += 1 if cfg.norm == "none" else 0  # its ResidualGain (SkipInit alpha)
        conv(h, w, 3, cin, cout)
        if guide_ch:
            conv(h, w, 1, guide_ch, cout)
        if emb_dim:
            dense(emb_dim, 2 * cout)
        conv(h, w, 3, cout, cout)
        if cin != cout:
            conv(h, w, 1, cin, cout)

    parts = {}
    # UNet
    C = cfg.diffusion_channels
    chs = [C * m for m in cfg.channel_multipliers]
    E = 4 * C
    dense(C, E)
    dense(E, E)
    cin = 3 + (3 if cfg.input_concat else 0)
    if cfg.guidance == "input":
        cin += cfg.regression_channels * len(cfg.guidance_scales)
    p = cfg.patch_size
    height, width = height // p, width // p  # the UNet's levels work on p x p patches
    conv(height, width, 3, cin * p * p, chs[0])
    skips, c = [chs[0]], chs[0]
    for lvl, ch in enumerate(chs):
        h, w = height >> lvl, width >> lvl
        for i in range(cfg.num_res_blocks):
            g = cfg.guidance_width if (cfg.guidance == "latent" and i < cfg.guided_blocks_per_level
                                       and p * 2 ** lvl in cfg.guidance_scales) else None
            res(h, w, c, ch, E, g)
            c = ch
            skips.append(c)
        if lvl < len(chs) - 1:
            skips.append(c)
    h, w = height >> (len(chs) - 1), width >> (len(chs) - 1)
    for _ in range(cfg.num_middle_blocks):
        res(h, w, c, c, E)
    for lvl in reversed(range(len(chs))):
        h, w = height >> lvl, width >> lvl
        for _ in range(cfg.num_res_blocks + 1):
            res(h, w, c + skips.pop(), chs[lvl], E)
            c = chs[lvl]
        if lvl > 0:
            conv(h * 2, w * 2, 3, c, c)
    acc["params"] += norm_params * c  # output norm
    conv(height, width, 3, c, 3 * p * p)
    height, width = height * p, width * p
    parts["unet"] = dict(acc)
    # guidance network
    if cfg.guidance != "none":
        acc.update(params=0, flops=0)
        G = cfg.guidance_width
        for k in cfg.guidance_scales:
            h, w = height // k, width // k
            conv(h, w, 3, cfg.phi_channels, G)
            for _ in range(cfg.guidance_blocks):
                res(h, w, G, G)
            conv(h, w, 3, G, cfg.regression_channels)
        parts["guidance_net"] = dict(acc)
    return _result(parts, by_type)


# ----------------------------------------------------------------------------- TF profiler

def tf_profiler_flops(cfg: ModelConfig, height: int = 64, width: int = 64, model=None) -> dict:
    """TensorFlow's profiler (tf.compat.v1.profiler, float_operation) on the concrete graph of
    one denoising step (guidance included, batch 1, static shapes):
    {"conv_matmul": FLOPs of the Conv2D + MatMul ops, "total": FLOPs of every op,
    "by_op": {op type: FLOPs}}. TF counts Conv2D as 2 * out_elems * k_h * k_w * C_in and
    MatMul as 2 * m * k * n, i.e. the convention of count(). model: a GuidedDenoiser of cfg
    to reuse (built when None)."""
    import tensorflow as tf

    from trainer.model import GuidedDenoiser

    model = GuidedDenoiser(cfg) if model is None else model
    img = tf.TensorSpec([1, height, width, 3], tf.float32)
    phi_spec = {k: tf.TensorSpec([1, height // k, width // k, cfg.phi_channels], tf.float32)
                for k in cfg.guidance_scales} if cfg.guidance != "none" else {}

    @tf.function(input_signature=[img, img, tf.TensorSpec([1], tf.float32), phi_spec])
    def step(x_t, y, gamma, phi):
        eps, regressions = model(x_t, y, gamma, phi)
        return eps, regressions  # keep R_k in the graph (eps alone does not need it in "latent")

    graph = step.get_concrete_function().graph  # variables are resources of known shape
    opts = (tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
        .with_empty_output().build())
    root = tf.compat.v1.profiler.profile(graph, cmd="scope", options=opts)
    by_op: Dict[str, int] = {}
    stack = list(root.children)
    while stack:  # the scope tree holds one node per graph op
        node = stack.pop()
        stack.extend(node.children)
        try:
            op_type = graph.get_operation_by_name(node.name).type
        except (KeyError, ValueError):
            continue
        by_op[op_type] = by_op.get(op_type, 0) + int(node.float_ops)
    return {"conv_matmul": by_op.get("Conv2D", 0) + by_op.get("MatMul", 0),
            "total": int(root.total_float_ops),
            "by_op": {k: v for k, v in sorted(by_op.items()) if v}}


# ----------------------------------------------------------------------------- CLI entry

def config_name(diffusion: str, guide: str) -> str:
    d = str(diffusion).strip().upper()
    g = str(guide).strip()
    g = "none" if g.lower() == "none" else g.upper()
    if d not in ("S", "L"):
        raise ValueError(f"--diffusion must be S or L, got {diffusion!r}")
    if g not in ("none", "S", "L"):
        raise ValueError(f"--guide must be none, S or L, got {guide!r}")
    return f"icDPM-{d}" if g == "none" else f"{d}+Guide-{g}"


def model_stats_main(diffusion: str, guide: str, height: int = 720, width: int = 1280) -> dict:
    """`deblur model-stats`: params and FLOPs of one step (guidance included) of one of the
    paper's models (its experiment's model, trainer/experiments.py), next to the paper's
    Table 11 figures. Raises ValueError on invalid arguments."""
    name = config_name(diffusion, guide)
    cfg = experiments.get(name).model
    for side, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % cfg.multiple:
            raise ValueError(f"--{side} must be a positive multiple of {cfg.multiple}, got {v!r}")
    res = count(cfg, height, width)
    p_params, p_flops = PAPER_TABLE11[name]
    out = {"config": name, "params": res["params"], "flops": res["flops"],
           "gflops": round(res["flops"] / 1e9, 1), "height": height, "width": width,
           "paper_params": int(p_params), "paper_flops": int(p_flops),
           "params_vs_paper": round(res["params"] / p_params - 1, 4),
           "breakdown": res["breakdown"]}
    # the paper's FLOPs are for 720 x 1280; scale them for other sizes (fully convolutional)
    out["paper_flops_at_size"] = int(p_flops * height * width / (720 * 1280))
    out["flops_vs_paper"] = round(res["flops"] / out["paper_flops_at_size"] - 1, 4)
    return out
