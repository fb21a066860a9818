"""The guided icDPM of "Multiscale Structure Guided Diffusion for Image Deblurring" (paper sec. 3).

Two Keras 3 functional models (docs/model.md maps every part to the paper):

  guidance_net  {"x2": phi_2, "x4": phi_4, "x8": phi_8}  (B, H/k, W/k, C_phi)
                -> ({"x2": H_2(phi_2), ...}, {"x2": R_2(H_2(phi_2)), ...})
                H_k: conv 3x3 then `guidance_blocks` residual blocks, all at scale 1/k (no
                down/upsampling, no noise-level input); R_k: one conv 3x3 -> 1 (gray) or 3 (rgb).
  unet          {"x_t", "y", "gamma", "guide_x2", ...} -> eps (B, H, W, 3)
                SR3/DDPM-style UNet G([x_t, y], gamma); gamma enters every residual block by
                FiLM (scale and shift after the second GroupNorm); guidance="latent" adds
                conv1x1(H_k features) inside the first residual block(s) of the encoder level whose
                resolution is 1/k ("guided residual block"); guidance="input" upsamples the
                regressions R_k (nearest) to H x W and concatenates them to the input.

GuidedDenoiser ties both together: eps, regressions = model(x_t, y, gamma, phi).
phi and the returned regressions are dicts keyed by the integer factor k (2, 4, 8), as in
trainer/data.py; the Keras models' own dict keys are the strings "x2", "x4", "x8".
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Mapping, Optional, Tuple

import keras
from keras import layers, ops

GUIDANCE_MODES = ("none", "input", "latent")
GUIDANCE_TARGETS = ("gray", "rgb")
OUTPUTS = ("eps", "preconditioned")
NORMS = ("group", "pixel", "none")
INPUT_SCALINGS = ("edm", "signal")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and ablation switches. The named configurations are the experiments' model
    sections (trainer/experiments.py: get(name).model); docs/model.md explains the choice."""

    diffusion_channels: int = 32  # base width C of the UNet: S = 32, L = 64
    channel_multipliers: Tuple[int, ...] = (1, 2, 3, 4)  # width C*m of levels 1, 1/2, 1/4, 1/8
    # p: the UNet works on p x p patches (space-to-depth at its input, depth-to-space after its
    # last conv, as "patching" in simple diffusion, Hoogeboom et al. 2023): its first level is at
    # 1/p, the FLOPs of a level drop by p^2. 1 = the paper's UNet (level 1 at full resolution)
    patch_size: int = 1
    num_res_blocks: int = 3  # residual blocks per encoder level (decoder: +1, DDPM-style)
    num_middle_blocks: int = 1  # residual blocks at the bottleneck
    # dilation of the first 3x3 conv of each residual block (a dilated residual block, as in
    # the context aggregation of Yu & Koltun 2016): block i of an encoder or decoder level uses
    # dilations[i % n], middle block i dilations[(num_res_blocks + i) % n], so (1, 2, 4, 8) with
    # 2 encoder and 2 middle blocks grows the deepest level's receptive field 1, 2, 4, 8
    dilations: Tuple[int, ...] = (1,)
    guidance: str = "latent"  # "none" | "input" | "latent"
    guidance_channels: int = 32  # base width G of H_k: Guide-S = 32, Guide-L = 64
    guidance_multiplier: int = 3  # H_k works at G * guidance_multiplier channels (96 / 192)
    guidance_blocks: int = 10  # residual blocks of each H_k
    guidance_scales: Tuple[int, ...] = (2, 4, 8)  # the factors k of phi_k; (8,) = single scale
    # R_k's conv predicts phi_k(x) - phi_k(y) and phi_k(y) is added back (an identity skip), so
    # the regression starts at the identity baseline; False = the literal "R_k(H_k(.))".
    guidance_residual: bool = True
    guided_blocks_per_level: int = 1  # "latent": first n encoder blocks at 1/k get H_k features
    guidance_target: str = "gray"  # what R_k regresses: "gray" (1 ch) | "rgb" (3 ch)
    phi_channels: int = 1  # channels of phi_k(y) (gray luma)
    input_concat: bool = True  # concatenate y to x_t at the input (6 channels)
    # feed the UNet r_t = x_t - sqrt(gamma) y instead of x_t (DvSR's predictor-corrector with
    # the identity as predictor): the noised residual x - y, same eps target (docs/model.md)
    input_residual: bool = False
    # What the UNet's last conv F means. "eps": F is eps_hat itself (the paper's literal G).
    # "preconditioned": F is mapped to eps_hat in closed form (Karras et al. 2022, EDM, its
    # c_skip / c_out written for eps; docs/model.md): eps_hat = sqrt(1-gamma) r_t / q
    # - sigma_data sqrt(gamma) F / sqrt(q), q = 1 - gamma + gamma sigma_data^2, r_t the UNet's
    # input (x_t, or the noised residual). The model still outputs eps and L_DPM is still the
    # L1 of eps; F is a unit-scale target at every noise level (the noise at low noise, the
    # clean signal / sigma_data at high noise) instead of a tiny correction of a scaled copy of
    # x_t, which a small network cannot reproduce precisely enough to recover x.
    output: str = "eps"
    # How the preconditioned UNet sees r_t. "edm": c_in r_t = r_t / sqrt(q), unit variance at
    # every gamma (Karras et al.), so at the pure-noise end its x_t channels are unit-variance
    # noise that carries nothing of x; "signal": sqrt(gamma) c_in r_t, variance gamma, which
    # fades to 0 as the noise takes over and leaves the UNet [~0, y] there, the input of a
    # plain regressor. Measured: a regressor fed unit noise beside y returned y unchanged, a
    # reading withdrawn the same day: those networks had gone dead (docs/experiments.md,
    # 2026-12-03)
    input_scaling: str = "edm"
    sigma_data: float = 0.5  # std of the clean signal the chain diffuses (x, or x - y)
    guidance_noise_sigma: float = 0.05  # sigma of n in phi_k(y), [-1, 1] scale (tf.data adds it)
    noise_embedding_scale: float = 5000.0  # sinusoidal embedding of scale * sqrt(gamma) (WaveGrad)
    dropout: float = 0.0
    # "group": GroupNorm before each conv pair and the output conv (DDPM / SR3), statistics
    # over the whole image; "pixel": LayerNorm over each pixel's channels; "none": no
    # normalisation layer at all (the residual baseline's plain residual blocks)
    norm: str = "group"
    norm_groups: int = 32  # GroupNorm groups (gcd with the channel count)
    norm_epsilon: float = 1e-5

    def __post_init__(self):
        # tuples, also when built from lists (e.g. a JSON config)
        object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
        object.__setattr__(self, "guidance_scales", tuple(self.guidance_scales))
        object.__setattr__(self, "dilations", tuple(self.dilations))
        if not self.dilations or any(not isinstance(d, int) or isinstance(d, bool) or d < 1
                                     for d in self.dilations):
            raise ValueError(f"dilations must be positive integers, got {self.dilations!r}")
        for name in ("diffusion_channels", "num_res_blocks", "guidance_channels", "patch_size",
                     "guidance_multiplier", "guidance_blocks", "phi_channels", "norm_groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.guided_blocks_per_level, int) or not (
                1 <= self.guided_blocks_per_level <= self.num_res_blocks):
            raise ValueError(f"guided_blocks_per_level must be in 1..num_res_blocks, "
                             f"got {self.guided_blocks_per_level!r}")
        if not isinstance(self.num_middle_blocks, int) or self.num_middle_blocks < 0:
            raise ValueError(f"num_middle_blocks must be an integer >= 0, "
                             f"got {self.num_middle_blocks!r}")
        if not self.channel_multipliers or any(
                not isinstance(m, int) or m < 1 for m in self.channel_multipliers):
            raise ValueError(f"channel_multipliers must be positive integers, "
                             f"got {self.channel_multipliers!r}")
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {self.guidance!r}")
        if self.guidance_target not in GUIDANCE_TARGETS:
            raise ValueError(f"guidance_target must be one of {GUIDANCE_TARGETS}, "
                             f"got {self.guidance_target!r}")
        s = self.guidance_scales
        if not s or any(not isinstance(k, int) or k < 2 or k & (k - 1) for k in s):
            raise ValueError(f"guidance_scales must be powers of two >= 2, got {s!r}")
        if len(set(s)) != len(s) or list(s) != sorted(s):
            raise ValueError(f"guidance_scales must be increasing and unique, got {s!r}")
        if self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two, got {self.patch_size!r}")
        deepest = self.patch_size * 2 ** (len(self.channel_multipliers) - 1)
        if self.guidance == "latent" and (max(s) > deepest or min(s) < self.patch_size):
            raise ValueError(f"guidance at scales {list(s)} needs UNet levels at those "
                             f"resolutions: {len(self.channel_multipliers)} levels on "
                             f"{self.patch_size}x{self.patch_size} patches reach "
                             f"1/{self.patch_size} .. 1/{deepest}")
        if self.input_residual and not self.input_concat:
            raise ValueError("input_residual needs input_concat (the UNet must see y)")
        if not self.input_concat and self.guidance == "none":
            raise ValueError("input_concat=False with guidance='none' would never show y "
                             "to the model")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, "
                             f"got {self.input_scaling!r}")
        if self.input_scaling != "edm" and self.output != "preconditioned":
            raise ValueError("input_scaling applies to output 'preconditioned' only")
        if not (isinstance(self.sigma_data, (int, float)) and self.sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.guidance_noise_sigma >= 0:  # NaN too
            raise ValueError(f"guidance_noise_sigma must be >= 0, got {self.guidance_noise_sigma!r}")
        if self.noise_embedding_scale <= 0 or self.norm_epsilon <= 0:
            raise ValueError("noise_embedding_scale and norm_epsilon must be > 0")

    @property
    def regression_channels(self) -> int:
        return 1 if self.guidance_target == "gray" else 3

    @property
    def guidance_width(self) -> int:
        return self.guidance_channels * self.guidance_multiplier

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (UNet downsampling and the coarsest phi_k)."""
        m = self.patch_size * 2 ** (len(self.channel_multipliers) - 1)
        if self.guidance != "none":
            m = max(m, max(self.guidance_scales))
        return m

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def bfloat16_on_cpu() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AVX512_BF16 or AMX_BF16, Linux's
    /proc/cpuinfo flags), where train.mixed_precision "auto" trains in mixed bfloat16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def policy_name(mixed_precision: str, device_type: str = "CPU") -> str:
    """The Keras dtype policy of train.mixed_precision: "float32", "bfloat16", or "auto"
    (mixed bfloat16 on TPUs and on CPUs that have it, float32 elsewhere)."""
    if mixed_precision == "auto":
        native = device_type == "TPU" or (device_type == "CPU" and bfloat16_on_cpu())
        mixed_precision = "bfloat16" if native else "float32"
    return "mixed_bfloat16" if mixed_precision == "bfloat16" else "float32"


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras layers read the global dtype policy when they are built: build under `name`
    ("float32", "mixed_bfloat16"), then the previous policy is back (a float32 model after a
    bfloat16 one in the same process)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def scale_key(k: int) -> str:
    return f"x{int(k)}"


# ----------------------------------------------------------------------------- layers

@keras.saving.register_keras_serializable(package="deblur")
class NoiseLevelEmbedding(layers.Layer):
    """Sinusoidal embedding of the noise level (WaveGrad / SR3): gamma (B,) -> (B, dim).

    The embedded value is scale * sqrt(gamma) (the signal level, in [0, 1]); frequencies are
    10000^(-i / (dim/2 - 1)) as in the Transformer / DDPM position embedding.
    """

    def __init__(self, dim: int, scale: float = 5000.0, **kwargs):
        super().__init__(**kwargs)
        if dim % 2:
            raise ValueError("embedding dim must be even")
        self.dim, self.scale = dim, scale

    def call(self, gamma):
        half = self.dim // 2
        level = ops.sqrt(ops.clip(ops.cast(ops.reshape(gamma, (-1, 1)), "float32"), 0.0, 1.0))
        freqs = ops.exp(-math.log(10000.0) * ops.arange(half, dtype="float32") / max(half - 1, 1))
        arg = self.scale * level * ops.reshape(freqs, (1, half))
        return ops.concatenate([ops.sin(arg), ops.cos(arg)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "scale": self.scale}


def edm_q(gamma, sigma_data: float):
    """q = 1 - gamma + gamma sd^2 = gamma (sigma^2 + sd^2), sigma^2 = (1 - gamma) / gamma: the
    variance of r_t (PreconditionedNoise); c_in = 1 / sqrt(q)."""
    return 1.0 - gamma + gamma * sigma_data ** 2


def unit_loss_weight(gamma, sigma_data: float):
    """1 / (sd sqrt(gamma / q)): |eps_hat - eps| times this is |F - F*|, the error of the
    preconditioned network output itself (PreconditionedNoise), which EDM's loss weighting
    lambda(sigma) = 1 / c_out^2 makes equal at every noise level (Karras et al. 2022, sec. 5).
    The plain L1 of eps weighs F's error by sd sqrt(gamma / q): about 1e-3 at the pure-noise
    end, where F alone is the estimate of the sharp image."""
    return ops.sqrt(edm_q(gamma, sigma_data) / gamma) / sigma_data


@keras.saving.register_keras_serializable(package="deblur")
class PreconditionedNoise(layers.Layer):
    """[F, x_t, y, gamma] -> eps_hat, the EDM preconditioning (Karras et al. 2022, Table 1) in the
    variance-preserving form of this model. With sigma^2 = (1 - gamma) / gamma and
    r~ = r_t / sqrt(gamma) = d + sigma eps (d the clean signal: x, or x - y):
        d_hat   = c_skip r~ + c_out F,  c_skip = sd^2 / (sigma^2 + sd^2),
                  c_out = sigma sd / sqrt(sigma^2 + sd^2)
        eps_hat = (r~ - d_hat) / sigma
                = sqrt(1 - gamma) r_t / q - sd sqrt(gamma) F / sqrt(q),  q = 1 - gamma + gamma sd^2
    finite for every gamma in [0, 1]. |eps_hat - eps| = sd sqrt(gamma / q) |F - F*|: the L1 of
    eps weighs F's error by at most 1. residual: r_t = x_t - sqrt(gamma) y, else r_t = x_t
    (y is then ignored)."""

    def __init__(self, sigma_data: float, residual: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.sigma_data = float(sigma_data)
        self.residual = bool(residual)

    def call(self, inputs):
        f, x_t, y, gamma = (ops.cast(v, "float32") for v in inputs)
        g = ops.reshape(ops.clip(gamma, 0.0, 1.0), (-1, 1, 1, 1))
        r_t = x_t - ops.sqrt(g) * y if self.residual else x_t
        q = edm_q(g, self.sigma_data)
        return ops.sqrt(1.0 - g) * r_t / q - self.sigma_data * ops.sqrt(g) * f / ops.sqrt(q)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "sigma_data": self.sigma_data, "residual": self.residual}


@keras.saving.register_keras_serializable(package="deblur")
class SpaceToDepth(layers.Layer):
    """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch becomes one pixel's channels."""

    def __init__(self, p: int, **kwargs):
        super().__init__(**kwargs)
        self.p = int(p)

    def call(self, x):
        p, c = self.p, x.shape[-1]
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        x = ops.reshape(x, (b, h // p, p, w // p, p, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h // p, w // p, p * p * c))

    def compute_output_shape(self, s):
        p = self.p
        return (s[0], None if s[1] is None else s[1] // p, None if s[2] is None else s[2] // p,
                p * p * s[3])

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable(package="deblur")
class DepthToSpace(layers.Layer):
    """The inverse of SpaceToDepth: (B, h, w, p*p*C) -> (B, h*p, w*p, C)."""

    def __init__(self, p: int, **kwargs):
        super().__init__(**kwargs)
        self.p = int(p)

    def call(self, x):
        p = self.p
        c = x.shape[-1] // (p * p)
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        x = ops.reshape(x, (b, h, w, p, p, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h * p, w * p, c))

    def compute_output_shape(self, s):
        p = self.p
        return (s[0], None if s[1] is None else s[1] * p, None if s[2] is None else s[2] * p,
                s[3] // (p * p))

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable(package="deblur")
class ResidualGain(layers.Layer):
    """h -> alpha h with one learnable scalar alpha that starts at 0 (SkipInit, De & Smith 2020):
    the residual block of a UNet without normalisation (model.norm "none") starts as its skip
    path. Without it the no-norm UNet's decoder activations grew without bound in training
    (to -1e6 after 8000 steps), its last SiLU saw only large negative values and the network
    went dead: a constant output, whatever the input. It alone did not stop that in a full
    diffusion run; build_unet's linear read-out for norm "none" did (docs/experiments.md,
    2026-12-03)."""

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros")

    def call(self, h):
        return h * ops.cast(self.alpha, h.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def _norm(cfg: ModelConfig, ch: int, name: str):
    if cfg.norm == "none":
        return layers.Identity(name=name)
    if cfg.norm == "pixel":  # over each pixel's channels: no statistic across the image
        return layers.LayerNormalization(axis=-1, epsilon=cfg.norm_epsilon, name=name)
    return layers.GroupNormalization(groups=math.gcd(cfg.norm_groups, ch),
                                     epsilon=cfg.norm_epsilon, name=name)


def _conv(ch: int, k: int, name: str, dtype=None, dilation: int = 1):
    return layers.Conv2D(ch, k, padding="same", dilation_rate=dilation, name=name, dtype=dtype)


def res_block(cfg: ModelConfig, x, out_ch: int, name: str, emb=None, guide=None,
              dilation: int = 1):
    """norm-swish-conv(dilated), [+ conv1x1(guide)], norm, [FiLM(emb)], swish, dropout, conv;
    plus the (1x1-projected if needed) input (norm: cfg.norm, GroupNorm by default). emb:
    silu(noise-level embedding) (B, E) or None."""
    in_ch = x.shape[-1]
    h = layers.Activation("silu", name=f"{name}_act1")(_norm(cfg, in_ch, f"{name}_norm1")(x))
    h = _conv(out_ch, 3, f"{name}_conv1", dilation=dilation)(h)
    if guide is not None:  # the guided residual block (paper Fig. 12, middle)
        h = layers.Add(name=f"{name}_guided")([h, _conv(out_ch, 1, f"{name}_guide_proj")(guide)])
    h = _norm(cfg, out_ch, f"{name}_norm2")(h)
    if emb is not None:  # FiLM: h * (1 + scale) + shift, scale/shift = Dense(silu(emb))
        ss = layers.Dense(2 * out_ch, name=f"{name}_film")(emb)
        ss = layers.Reshape((1, 1, 2 * out_ch), name=f"{name}_film_reshape")(ss)
        scale, shift = ops.split(ss, 2, axis=-1)
        h = h * (1.0 + scale) + shift
    h = layers.Activation("silu", name=f"{name}_act2")(h)
    if cfg.dropout > 0:
        h = layers.Dropout(cfg.dropout, name=f"{name}_dropout")(h)
    h = _conv(out_ch, 3, f"{name}_conv2")(h)
    if cfg.norm == "none":  # SkipInit: the branch starts switched off (ResidualGain)
        h = ResidualGain(name=f"{name}_gain")(h)
    skip = x if in_ch == out_ch else _conv(out_ch, 1, f"{name}_skip")(x)
    return layers.Add(name=f"{name}_out")([skip, h])


def _dilation(cfg: ModelConfig, i: int) -> int:
    return cfg.dilations[i % len(cfg.dilations)]


def _check_size(cfg: ModelConfig, height, width):
    for side, v in (("height", height), ("width", width)):
        if v is not None and (v <= 0 or v % cfg.multiple):
            raise ValueError(f"{side} {v} is not a positive multiple of {cfg.multiple} "
                             f"(the model's downsampling factor); pad the image first")


def _sub(size, k):
    return None if size is None else size // k


def build_guidance_net(cfg: ModelConfig, height: Optional[int] = None,
                       width: Optional[int] = None) -> keras.Model:
    """H_k and R_k for every scale k (paper eq. 3-4). height/width: static full-image size
    (None = any size; a static size is used by trainer/flops.py to read the output shapes)."""
    if cfg.guidance == "none":
        raise ValueError("guidance='none' has no guidance network")
    _check_size(cfg, height, width)
    inputs, feats, regs = {}, {}, {}
    for k in cfg.guidance_scales:
        s = scale_key(k)
        inputs[s] = keras.Input((_sub(height, k), _sub(width, k), cfg.phi_channels), name=s)
        h = _conv(cfg.guidance_width, 3, f"H_{s}_conv_in")(inputs[s])
        for i in range(cfg.guidance_blocks):
            h = res_block(cfg, h, cfg.guidance_width, f"H_{s}_res{i}")
        feats[s] = h
        if cfg.guidance_residual:
            # zero-initialised so the regression starts exactly at the identity baseline;
            # a gray phi broadcasts over an RGB target's channels
            r = layers.Conv2D(cfg.regression_channels, 3, padding="same", name=f"R_{s}",
                              dtype="float32", kernel_initializer="zeros")(h)  # R_k: one conv
            regs[s] = keras.ops.add(r, keras.ops.cast(inputs[s], "float32"))
        else:
            regs[s] = _conv(cfg.regression_channels, 3, f"R_{s}", "float32")(h)  # R_k: one conv
    return keras.Model(inputs, (feats, regs), name="guidance_net")


def build_unet(cfg: ModelConfig, height: Optional[int] = None,
               width: Optional[int] = None) -> keras.Model:
    """G([x_t, y], gamma[, guidance]) -> eps (paper eq. 2 and sec. 3, Fig. 12 left)."""
    _check_size(cfg, height, width)
    C = cfg.diffusion_channels
    chs = [C * m for m in cfg.channel_multipliers]
    inputs = {"x_t": keras.Input((height, width, 3), name="x_t")}
    if cfg.input_concat:
        inputs["y"] = keras.Input((height, width, 3), name="y")
    inputs["gamma"] = keras.Input((), name="gamma")
    guide_in = {}  # "latent": H_k features; "input": regressions R_k(H_k(phi_k))
    if cfg.guidance != "none":
        ch = cfg.guidance_width if cfg.guidance == "latent" else cfg.regression_channels
        for k in cfg.guidance_scales:
            name = f"guide_{scale_key(k)}"
            guide_in[k] = inputs[name] = keras.Input((_sub(height, k), _sub(width, k), ch), name=name)

    # noise-level embedding -> MLP (SR3 / WaveGrad); silu(emb) feeds each block's FiLM Dense.
    # float32 under mixed precision: bfloat16 cannot tell gamma = 0.9999 from 1.
    emb = NoiseLevelEmbedding(C, cfg.noise_embedding_scale, name="noise_embedding",
                              dtype="float32")(inputs["gamma"])
    emb = layers.Dense(4 * C, activation="silu", name="emb_dense1", dtype="float32")(emb)
    emb = layers.Dense(4 * C, name="emb_dense2", dtype="float32")(emb)
    emb = layers.Activation("silu", name="emb_act")(emb)

    x_t = inputs["x_t"]
    if cfg.input_residual:  # r_t = x_t - sqrt(gamma) y = sqrt(gamma) (x - y) + sqrt(1 - gamma) eps
        signal = ops.reshape(ops.sqrt(ops.cast(inputs["gamma"], x_t.dtype)), (-1, 1, 1, 1))
        x_t = layers.Subtract(name="input_residual")([x_t, signal * inputs["y"]])
    if cfg.output == "preconditioned":  # c_in: r_t / sqrt(q) has unit variance at every gamma
        g = ops.reshape(ops.cast(inputs["gamma"], "float32"), (-1, 1, 1, 1))
        c_in = 1.0 / ops.sqrt(edm_q(g, cfg.sigma_data))
        if cfg.input_scaling == "signal":  # variance gamma: the pure-noise end feeds ~0
            c_in = c_in * ops.sqrt(ops.clip(g, 0.0, 1.0))
        x_t = layers.Multiply(name="c_in")([x_t, ops.cast(c_in, x_t.dtype)])
    x = [x_t] + ([inputs["y"]] if cfg.input_concat else [])
    if cfg.guidance == "input":
        x += [layers.UpSampling2D(k, interpolation="nearest",
                                  name=f"guide_up_{scale_key(k)}")(guide_in[k])
              for k in cfg.guidance_scales]
    x = layers.Concatenate(name="input_concat")(x) if len(x) > 1 else x[0]
    p = cfg.patch_size
    if p > 1:
        x = SpaceToDepth(p, name="patchify")(x)

    h = _conv(chs[0], 3, "conv_in")(x)
    skips = [h]
    for lvl, ch in enumerate(chs):  # encoder: level lvl works at 1/(p 2^lvl)
        for i in range(cfg.num_res_blocks):
            g = guide_in.get(p * 2 ** lvl) if (cfg.guidance == "latent"
                                           and i < cfg.guided_blocks_per_level) else None
            h = res_block(cfg, h, ch, f"enc{lvl}_res{i}", emb, guide=g, dilation=_dilation(cfg, i))
            skips.append(h)
        if lvl < len(chs) - 1:
            h = layers.AveragePooling2D(2, name=f"enc{lvl}_down")(h)
            skips.append(h)
    for i in range(cfg.num_middle_blocks):
        h = res_block(cfg, h, chs[-1], f"mid_res{i}", emb,
                      dilation=_dilation(cfg, cfg.num_res_blocks + i))
    for lvl in reversed(range(len(chs))):  # decoder
        for i in range(cfg.num_res_blocks + 1):
            h = layers.Concatenate(name=f"dec{lvl}_cat{i}")([h, skips.pop()])
            h = res_block(cfg, h, chs[lvl], f"dec{lvl}_res{i}", emb, dilation=_dilation(cfg, i))
        if lvl > 0:
            h = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{lvl}_up")(h)
            h = _conv(chs[lvl], 3, f"dec{lvl}_up_conv")(h)
    # norm "none": no SiLU before conv_out. Nothing bypasses that last activation, and an
    # unnormalised stream can drift where it is ~0 everywhere: the network went dead so in
    # training (F constant), which a normalised stream cannot (docs/experiments.md, 2026-12-03)
    h = layers.Activation("linear" if cfg.norm == "none" else "silu",
                          name="out_act")(_norm(cfg, chs[0], "out_norm")(h))
    out = _conv(3 * p * p, 3, "conv_out", "float32")(h)  # float32 outputs under mixed precision
    if p > 1:
        out = DepthToSpace(p, name="unpatchify", dtype="float32")(out)
    if cfg.output == "preconditioned":
        # r_t again in float32 (the UNet's copy may be bfloat16 under mixed precision)
        out = PreconditionedNoise(cfg.sigma_data, cfg.input_residual, name="eps_from_F",
                                  dtype="float32")(
            [out, inputs["x_t"], inputs["y"] if cfg.input_residual else inputs["x_t"],
             inputs["gamma"]])
    return keras.Model(inputs, out, name="unet")


# ----------------------------------------------------------------------------- the model

class GuidedDenoiser(keras.Model):
    """eps, regressions = model(x_t, y, gamma, phi, training=False).

    x_t, y: (B, H, W, 3) in [-1, 1]; gamma: (B,) signal level of x_t = sqrt(gamma) x +
    sqrt(1 - gamma) eps; phi: {k: (B, H/k, W/k, phi_channels)} (ignored when guidance is
    "none"). Returns eps (B, H, W, 3) and {k: R_k(H_k(phi_k))} ({} without guidance).
    For sampling, guide(phi) once per image and denoise(x_t, y, gamma, guidance) per step.
    """

    def __init__(self, cfg: ModelConfig, name: str = "guided_denoiser", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        self.guidance_net = build_guidance_net(cfg) if cfg.guidance != "none" else None
        self.unet = build_unet(cfg)
        self.built = True  # both functional models are built; count_params() works

    @property
    def multiple(self) -> int:
        return self.cfg.multiple

    def check_size(self, height, width):
        """ValueError unless height and width (ints or None) are multiples of `multiple`."""
        _check_size(self.cfg, height, width)

    def guide(self, phi: Mapping[int, object], training=False):
        """({k: H_k(phi_k)}, {k: R_k(H_k(phi_k))}); independent of gamma and x_t."""
        if self.guidance_net is None:
            return {}, {}
        missing = [k for k in self.cfg.guidance_scales if k not in phi]
        if missing:
            raise ValueError(f"phi lacks the guidance scales {missing} (has {sorted(phi)})")
        feats, regs = self.guidance_net({scale_key(k): phi[k] for k in self.cfg.guidance_scales},
                                        training=training)
        return ({k: feats[scale_key(k)] for k in self.cfg.guidance_scales},
                {k: regs[scale_key(k)] for k in self.cfg.guidance_scales})

    def denoise(self, x_t, y, gamma, guidance: Tuple[Mapping, Mapping] = ({}, {}), training=False):
        """eps = G([x_t, y], gamma, guidance) with guidance = self.guide(phi)."""
        self.check_size(x_t.shape[1], x_t.shape[2])
        inputs = {"x_t": x_t, "gamma": ops.reshape(gamma, (-1,))}
        if self.cfg.input_concat:
            inputs["y"] = y
        feats, regs = guidance
        source = feats if self.cfg.guidance == "latent" else regs
        if self.cfg.guidance != "none":
            for k in self.cfg.guidance_scales:
                inputs[f"guide_{scale_key(k)}"] = source[k]
        return self.unet(inputs, training=training)

    def call(self, x_t, y, gamma, phi=None, training=False):
        guidance = self.guide(phi or {}, training=training)
        return self.denoise(x_t, y, gamma, guidance, training=training), guidance[1]
