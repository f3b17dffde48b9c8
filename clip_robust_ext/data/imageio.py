"""Decoding image files into RGB for every PIL mode, or a one-line error naming the file.

PIL's own `convert("RGB")` clips 16- and 32-bit greyscale to 255 (a 16-bit PNG becomes white)
and drops alpha; palette, CMYK, YCbCr and the like convert correctly. Alpha is dropped as
open_clip's preprocessing does (`image.convert("RGB")`), after palette transparency is expanded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ClipxUsageError

_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image, where: str) -> Image.Image:
    """An 8-bit RGB image with the same picture, whatever `img.mode` is."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_GREY:
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ClipxUsageError(
                f"{where}: 32-bit integer image with values outside [0, 65535]; save it as 8- or "
                "16-bit"
            )
        grey = ((arr * 255 + 32767) // 65535).astype(np.uint8)  # 16-bit range -> 8-bit, rounded
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ClipxUsageError(
                f"{where}: floating-point image ('F' mode) with values outside [0, 1]; its "
                "intensity range is ambiguous, save it as an 8- or 16-bit image"
            )
        return Image.fromarray(np.round(arr * 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ClipxUsageError(f"{where}: cannot convert a '{mode}' image to RGB: {exc}") from None


def open_rgb(source: str | os.PathLike | bytes, where: str | None = None) -> Image.Image:
    """Decode a file (or its bytes) fully into RGB; corrupt files and decompression bombs are
    one-line errors naming `where` (the file)."""
    where = where or str(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with Image.open(stream) as img:
            img.load()
            return to_rgb(img, where)
    except Image.DecompressionBombError as exc:
        raise ClipxUsageError(
            f"{where}: image too large to decode safely ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "if the file is trusted"
        ) from None
    except UnidentifiedImageError:
        raise ClipxUsageError(f"{where}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ClipxUsageError(f"{where}: corrupt or truncated image ({text})") from None
