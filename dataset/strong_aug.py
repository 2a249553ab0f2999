"""MLKD's strong view (Jin et al., CVPR 2023), as a PIL transform for DataLoaders and as a batched op on the device.

Official: Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/dataset/cifar100.py` (commit 5ee473f),
`get_cifar100_dataloaders_strong` -> `get_cifar100_train_transform_strong`: each image gives a weak view (RandomCrop
32 with zero padding 4, horizontal flip) and, drawn independently, a strong view: the same crop and flip, then
FixMatch's RandAugment(n=2, m=10), then ToTensor + Normalize. RandAugment's `m` is unused there; its law is:
- n = 2 operations drawn uniformly with replacement from the 14 of OPS, each with a magnitude uniform on its range
  (RANGES), applied in turn with PIL's semantics: ImageEnhance blends (Brightness, Color, Contrast, Sharpness),
  ImageOps lookup tables (AutoContrast, Equalize, Posterize to int(v) bits, Solarize at threshold v), nearest-
  neighbour affine maps with black fill (Rotate by v degrees about the centre, ShearX/Y by v, TranslateX/Y by v
  times the width/height);
- then Cutout: a square of side v = U[0, 0.5) * W filled with (125, 123, 114). Its corner is int(max(0, c - v / 2))
  with c = numpy.random.uniform(W), which (low = W, high = 1) is uniform on (1, W], not on [0, W); the official law
  is kept. PIL's rectangle includes both ends, so the side is int(v) + 1 pixels where the image does not clip it.
`strong_transform` is the PIL pipeline; `strong_views_on_device` draws the same law from a torch.Generator and
applies it to a uint8 batch on its device, reproducing PIL's integer arithmetic (lookup tables, the 16.16
fixed-point affine sampling, the truncating blends), so that the same parameters give the same pixels.
"""
import functools
import math

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms

from dataset.cifar100 import CIFAR100_MEAN, CIFAR100_STD, CROP_PADDING

OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate",
       "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
RANGES = ((0.0, 1.0), (0.05, 0.95), (0.05, 0.95), (0.05, 0.95), (0.0, 1.0), (0.0, 1.0), (4.0, 8.0), (-30.0, 30.0),
          (0.05, 0.95), (-0.3, 0.3), (-0.3, 0.3), (0.0, 256.0), (-0.3, 0.3), (-0.3, 0.3))
NUM_OPS = 2
CUTOUT_MAX = 0.5  # the side is U[0, CUTOUT_MAX) times the width
CUTOUT_FILL = (125, 123, 114)

_INDEX = {name: i for i, name in enumerate(OPS)}
_LUT_OPS = ("AutoContrast", "Equalize", "Identity", "Posterize", "Solarize")
_BLEND_OPS = ("Brightness", "Color", "Contrast", "Sharpness")
_AFFINE_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_SMOOTH = (1, 1, 1, 1, 5, 1, 1, 1, 1)  # PIL's ImageFilter.SMOOTH kernel, divided by 13


def magnitude(op, u):
    """The magnitude of OPS[op] for a uniform draw u in [0, 1): lo + (hi - lo) * u, in double precision."""
    lo, hi = RANGES[op]
    return lo + (hi - lo) * float(u)


# ---- PIL path -----------------------------------------------------------------------------------------------------

def pil_op(img, op, v):
    """OPS[op] with magnitude v on a PIL RGB image, as the official RandAugment applies it."""
    name = OPS[op]
    width, height = img.size
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Brightness":
        return ImageEnhance.Brightness(img).enhance(v)
    if name == "Color":
        return ImageEnhance.Color(img).enhance(v)
    if name == "Contrast":
        return ImageEnhance.Contrast(img).enhance(v)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Identity":
        return img
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name == "Rotate":
        return img.rotate(v)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(v)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    matrix = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
              "TranslateX": (1, 0, v * width, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v * height)}[name]
    return img.transform(img.size, Image.AFFINE, matrix)


def pil_cutout(img, u_size, u_x, u_y):
    """The official Cutout from uniform draws: side u_size * CUTOUT_MAX * W, corner from numpy's uniform(W)."""
    width, height = img.size
    side = u_size * CUTOUT_MAX * width
    if side <= 0:
        return img
    x0 = int(max(0.0, width + (1 - width) * u_x - side / 2))
    y0 = int(max(0.0, height + (1 - height) * u_y - side / 2))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, min(width, x0 + side), min(height, y0 + side)), CUTOUT_FILL)
    return img


class RandAugment:
    """The official strong view's RandAugment(n, m) + Cutout on PIL images (Jin et al., CVPR 2023, after FixMatch).

    `m` is kept for the official signature and unused, as there. Randomness comes from torch's default generator
    (seeded per DataLoader worker by torch), or from `generator`.
    """

    def __init__(self, n=NUM_OPS, m=10, generator=None):
        self.n = n
        self.m = m
        self.generator = generator

    def draw(self):
        """(ops [n] ints, uniform draws [n] for their magnitudes, (u_size, u_x, u_y) for Cutout)."""
        ops = torch.randint(len(OPS), (self.n,), generator=self.generator).tolist()
        u = torch.rand(self.n + 3, generator=self.generator, dtype=torch.float64).tolist()
        return ops, u[:self.n], tuple(u[self.n:])

    @staticmethod
    def apply(img, ops, u, cutout):
        """The ops with magnitudes from u, then Cutout, on a PIL image."""
        for op, draw in zip(ops, u):
            img = pil_op(img, op, magnitude(op, draw))
        return pil_cutout(img, *cutout)

    def __call__(self, img):
        return self.apply(img, *self.draw())


def strong_transform(mean=CIFAR100_MEAN, std=CIFAR100_STD, size=32, padding=CROP_PADDING):
    """MLKD's strong view (Jin et al., CVPR 2023) for PIL images: crop, flip, RandAugment(2, 10) + Cutout, ToTensor,
    Normalize."""
    return transforms.Compose([
        transforms.RandomCrop(size, padding=padding),
        transforms.RandomHorizontalFlip(),
        RandAugment(NUM_OPS, 10),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class TwoViewDataset(Dataset):
    """uint8 HWC images [N, H, W, 3] and labels [N] -> dicts {"images", "targets", ["index"], "images_strong"}.

    The weak and the strong view of an item are drawn independently from the same image, as the official
    MultipleApply does; the keys are Batch's fields, so `Batch.from_loader` takes the collated dicts.
    """

    def __init__(self, base_dataset_images, labels, weak_tf, strong_tf, with_index=False):
        self.data = base_dataset_images
        self.targets = labels
        self.weak_tf = weak_tf
        self.strong_tf = strong_tf
        self.with_index = with_index

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index])
        item = {"images": self.weak_tf(img), "targets": int(self.targets[index])}
        if self.with_index:
            item["index"] = index
        item["images_strong"] = self.strong_tf(img)
        return item


# ---- device path --------------------------------------------------------------------------------------------------

def draw_strong_params(batch, generator, device=None):
    """The strong view's random draws for `batch` images: ops [B, 2] int64, magnitude draws [B, 2] and Cutout draws
    [B, 3] (side, x, y) float64 uniforms, all from `generator` on its device."""
    device = generator.device if device is None else device
    ops = torch.randint(len(OPS), (batch, NUM_OPS), generator=generator, device=device)
    u = torch.rand(batch, NUM_OPS, generator=generator, device=device, dtype=torch.float64)
    cutout = torch.rand(batch, 3, generator=generator, device=device, dtype=torch.float64)
    return ops, u, cutout


def strong_views_on_device(images_uint8, generator, crop_flip=True):
    """MLKD's strong view (Jin et al., CVPR 2023) of a uint8 batch [B, 3, H, W], on its device -> uint8 [B, 3, H, W].

    images_uint8: the un-augmented images. crop_flip: first draw the zero-padded (CROP_PADDING) random crop and the
    horizontal flip, independently of any weak view; False when the caller has already cropped and flipped them.
    Then RandAugment(2) and Cutout (see the module docstring). All randomness comes from `generator`, which must be
    on the images' device: the same seed gives the same views. No host synchronisation, no per-sample loop.
    """
    x = images_uint8
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"strong_views_on_device expects uint8 [B, 3, H, W], got {x.dtype} {list(x.shape)}")
    if crop_flip:
        x = random_crop_flip(x, generator, CROP_PADDING)
    ops, u, cutout = draw_strong_params(x.shape[0], generator, x.device)
    return randaugment_on_device(x, ops, u, cutout)


def random_crop_flip(x, generator, padding):
    """Crop of x zero-padded by `padding` at uniform offsets, flipped with p = 0.5 (RandomCrop + flip): [B, C, H, W]."""
    batch, _, height, width = x.shape
    padded = F.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=x.device)
    flip = torch.randint(0, 2, (batch, 1), generator=generator, device=x.device).bool()
    rows = offsets[0][:, None] + torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device).expand(batch, -1)
    cols = offsets[1][:, None] + torch.where(flip, width - 1 - cols, cols)
    channels = torch.arange(x.shape[1], device=x.device)
    return padded[torch.arange(batch, device=x.device)[:, None, None, None], channels[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


@functools.lru_cache(maxsize=None)
def _constants(device):
    """(range lows [14], range highs [14] float64, Cutout fill [1, 3, 1, 1] uint8) on `device`, made once (a copy
    from the host would wait for the device on every call)."""
    ranges = torch.tensor(RANGES, dtype=torch.float64)
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8).reshape(1, -1, 1, 1)
    return ranges[:, 0].to(device), ranges[:, 1].to(device), fill.to(device)


def randaugment_on_device(x, ops, u, cutout):
    """x uint8 [B, 3, H, W]; ops [B, n], u [B, n] and cutout [B, 3] from draw_strong_params -> uint8 [B, 3, H, W]."""
    lows, highs, _ = _constants(x.device)
    for step in range(ops.shape[1]):
        op = ops[:, step]
        x = apply_op_on_device(x, op, lows[op] + (highs[op] - lows[op]) * u[:, step])
    return cutout_on_device(x, cutout)


def _is(op, names):
    """[B] bool: op is one of `names`."""
    return functools.reduce(torch.logical_or, [op == _INDEX[name] for name in names])


def apply_op_on_device(x, op, v):
    """OPS[op[b]] with magnitude v[b] (float64) on every image b of x uint8 [B, 3, H, W], as PIL computes it.

    Every op is computed for the whole batch and each image takes its own (no host synchronisation).
    """
    shape = (-1, 1, 1, 1)
    by_lut = _lookup_tables(x, op, v).gather(2, x.flatten(2).long()).reshape(x.shape)
    degenerate = _degenerates(x, op)
    alpha = v.float().reshape(shape)
    blended = (degenerate + alpha * (x.float() - degenerate)).floor()
    out = torch.where(_is(op, _BLEND_OPS).reshape(shape), blended.to(torch.uint8), by_lut.to(torch.uint8))
    return torch.where(_is(op, _AFFINE_OPS).reshape(shape), _affine_nearest(x, op, v), out)


def _lookup_tables(x, op, v):
    """[B, C, 256] int64: the per-channel LUT of AutoContrast / Equalize / Posterize / Solarize, else identity."""
    batch, channels = x.shape[:2]
    flat = x.flatten(2).long()
    levels = torch.arange(256, device=x.device)
    identity = levels.expand(batch, channels, 256)
    lo, hi = flat.amin(2, keepdim=True).double(), flat.amax(2, keepdim=True).double()
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # a true division, as Python's (not 1/x * 255)
    stretched = (levels * scale - lo * scale).trunc().clamp(0, 255).long()
    autocontrast = torch.where(hi > lo, stretched, identity)
    hist = torch.zeros(batch, channels, 256, dtype=torch.int64, device=x.device).scatter_add_(
        2, flat, torch.ones_like(flat))
    present = hist > 0
    last = 255 - present.flip(2).long().argmax(2, keepdim=True)
    step = (hist.sum(2, keepdim=True) - hist.gather(2, last)) // 255
    below = hist.cumsum(2) - hist
    equalised = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    equalize = torch.where((present.sum(2, keepdim=True) > 1) & (step > 0), equalised, identity)
    bits = v.floor().clamp(min=1).long().reshape(-1, 1, 1)
    posterize = levels & ((255 >> (8 - bits)) << (8 - bits))
    solarize = torch.where(levels < v.reshape(-1, 1, 1), levels, 255 - levels)
    tables = identity
    for name, table in (("AutoContrast", autocontrast), ("Equalize", equalize), ("Posterize", posterize),
                        ("Solarize", solarize)):
        tables = torch.where((op == _INDEX[name]).reshape(-1, 1, 1), table, tables)
    return tables


def _degenerates(x, op):
    """float32 [B, C, H, W]: the image each ImageEnhance op blends from (black, gray, mean gray, smoothed)."""
    r, g, b = x.int().unbind(1)
    gray = ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16)[:, None]  # PIL's RGB -> L
    pixels = gray.shape[2] * gray.shape[3]
    mean_gray = (2 * gray.sum((1, 2, 3), keepdim=True) + pixels) // (2 * pixels)  # int(mean + 0.5), exactly
    smoothed = x.float().clone()  # PIL's SMOOTH filter keeps the border pixels
    smoothed[:, :, 1:-1, 1:-1] = _smooth_interior(x).float()
    degenerate = torch.zeros_like(smoothed)
    for name, image in (("Color", gray.float()), ("Contrast", mean_gray.float()), ("Sharpness", smoothed)):
        degenerate = torch.where((op == _INDEX[name]).reshape(-1, 1, 1, 1), image, degenerate)
    return degenerate


def _smooth_interior(x):
    """PIL's ImageFilter.SMOOTH (3x3 weights 1, centre 5, over 13, rounded) of the interior: [B, C, H - 2, W - 2].

    In integers: PIL's float32 sum never lies within its rounding error of a half (the sum S / 13 is never k + 1/2),
    so round(S / 13) = (2 S + 13) // 26 gives its pixels on every device (no TF32 convolution).
    """
    x = x.int()
    height, width = x.shape[2:]
    total = sum(x[:, :, dy:height - 2 + dy, dx:width - 2 + dx] * weight
                for (dy, dx), weight in zip(((i, j) for i in range(3) for j in range(3)), _SMOOTH))
    return (2 * total + 13) // 26


def _affine_matrices(op, v, height, width):
    """[B, 6] float64: PIL's inverse affine coefficients (a..f: x_in = a x + b y + c, y_in = d x + e y + f)."""
    ones, zeros = torch.ones_like(v), torch.zeros_like(v)
    angle = -torch.remainder(v, 360.0) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = width / 2, height / 2
    rows = {
        "Rotate": (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy),
        "ShearX": (ones, v, zeros, zeros, ones, zeros),
        "ShearY": (ones, zeros, zeros, v, ones, zeros),
        "TranslateX": (ones, zeros, v * width, zeros, ones, zeros),
        "TranslateY": (ones, zeros, zeros, zeros, ones, v * height),
    }
    matrix = torch.stack((ones, zeros, zeros, zeros, ones, zeros), dim=1)
    for name, coefficients in rows.items():
        matrix = torch.where((op == _INDEX[name])[:, None], torch.stack(coefficients, dim=1), matrix)
    return matrix


def _affine_nearest(x, op, v):
    """uint8 [B, C, H, W]: PIL's nearest-neighbour AFFINE transform with black fill, per image.

    Maps with a shear or rotation component use PIL's 16.16 fixed-point path (source = floor of the mapped pixel
    centre, coefficients rounded to 1/65536); pure translations its scaling path (double precision).
    """
    batch, channels, height, width = x.shape
    a, b, c, d, e, f = _affine_matrices(op, v, height, width).unbind(1)
    ys = torch.arange(height, device=x.device).reshape(1, -1, 1)
    xs = torch.arange(width, device=x.device).reshape(1, 1, -1)

    def fix(t):
        return (t * 65536.0 + 0.5).floor().long().reshape(-1, 1, 1)

    x_fixed = (fix(c + a * 0.5 + b * 0.5) + ys * fix(b) + xs * fix(a)) >> 16
    y_fixed = (fix(f + d * 0.5 + e * 0.5) + ys * fix(e) + xs * fix(d)) >> 16

    def coord(t):
        return torch.where(t < 0, -1.0, t.trunc()).long()

    x_scaled = coord((c + a * 0.5).reshape(-1, 1, 1) + xs * a.reshape(-1, 1, 1)).expand(batch, height, width)
    y_scaled = coord((f + e * 0.5).reshape(-1, 1, 1) + ys * e.reshape(-1, 1, 1)).expand(batch, height, width)
    fixed = ((b != 0) | (d != 0)).reshape(-1, 1, 1)
    x_in, y_in = torch.where(fixed, x_fixed, x_scaled), torch.where(fixed, y_fixed, y_scaled)
    valid = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    source = (y_in.clamp(0, height - 1) * width + x_in.clamp(0, width - 1)).flatten(1)
    out = x.flatten(2).gather(2, source[:, None, :].expand(batch, channels, -1)).reshape(x.shape)
    return torch.where(valid[:, None], out, torch.zeros_like(out))


def cutout_on_device(x, cutout):
    """The official Cutout on x uint8 [B, 3, H, W] from uniforms cutout [B, 3] (side, x, y), as pil_cutout."""
    height, width = x.shape[2:]
    side = cutout[:, 0] * CUTOUT_MAX * width
    x0 = (width + (1 - width) * cutout[:, 1] - side / 2).clamp(min=0).floor()
    y0 = (height + (1 - height) * cutout[:, 2] - side / 2).clamp(min=0).floor()
    x1, y1 = torch.minimum(x0 + side, torch.full_like(side, width)).floor(), \
        torch.minimum(y0 + side, torch.full_like(side, height)).floor()
    xs = torch.arange(width, device=x.device).reshape(1, 1, -1)
    ys = torch.arange(height, device=x.device).reshape(1, -1, 1)

    def within(t, lo, hi):
        return (t >= lo.reshape(-1, 1, 1)) & (t <= hi.reshape(-1, 1, 1))

    inside = within(xs, x0, x1) & within(ys, y0, y1) & (side > 0).reshape(-1, 1, 1)
    return torch.where(inside[:, None], _constants(x.device)[2], x)
