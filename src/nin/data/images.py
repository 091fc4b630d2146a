"""Image files -> uint8 tensors of the size and channel count a model was trained on."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import NinError
from .archive import Member


DEFAULT_MAX_PIXELS = 1 << 28  # 268 megapixels (16384 x 16384): larger files are refused unless the limit is raised


def max_image_pixels() -> int:
    """The largest image (in pixels) decoded: NIN_MAX_IMAGE_PIXELS, else DEFAULT_MAX_PIXELS. The limit stops a
    small file that claims a huge size (a decompression bomb) from taking the machine's memory."""
    text = os.environ.get("NIN_MAX_IMAGE_PIXELS", "")
    try:
        return int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise NinError(f"NIN_MAX_IMAGE_PIXELS must be a whole number of pixels, got {text!r}") from None


Image.MAX_IMAGE_PIXELS = None  # PIL's own limit (an error at 179 megapixels) is replaced by max_image_pixels()


def load_image(path, size: int, channels: int) -> torch.Tensor:
    """(channels, size, size) uint8 from an image file's path or an archive's member (``archive.Member``).
    Palette, alpha and 16-bit images are converted; alpha is dropped."""
    limit = max_image_pixels()
    try:
        source = io.BytesIO(path.read_bytes()) if isinstance(path, Member) else path
        with Image.open(source) as image:  # reads the header only: the size is checked before decoding
            if image.width * image.height > limit:
                raise NinError(f"{path} has {image.width}x{image.height} pixels, more than the limit of "
                               f"{limit:,}: raise it with NIN_MAX_IMAGE_PIXELS={image.width * image.height}")
            image.load()
            image = _upright(image)
            image = _to_8bit(image)
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((size, size), Image.Resampling.BILINEAR)
    except NinError:
        raise
    except FileNotFoundError:
        if isinstance(path, (str, os.PathLike)) and Path(path).is_symlink():
            raise NinError(f"image {path} is a link to {os.readlink(path)}, which does not exist") from None
        raise NinError(f"image {path} does not exist") from None
    except Exception as error:  # PIL raises many types for damaged files (OSError, ValueError, TypeError...)
        raise NinError(f"{path} is not a readable image ({error}): expected a PNG, JPEG or similar file") from None
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _upright(image: Image.Image) -> Image.Image:
    """The image as viewers show it: a phone stores a photo as its sensor saw it and records the turn in
    the EXIF orientation tag. A tag that cannot be read leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block is no reason to refuse pixels that decode
        return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grey images are scaled to 0..255 (PIL's own conversion would clip them)."""
    if image.mode == "P":
        return image.convert("RGBA")
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image
