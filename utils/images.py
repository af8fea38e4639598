"""Reading and writing whole 8-bit images for the demo codec: which images
are accepted (8-bit RGB or grayscale, one frame) and the one-line reason
when one is not; PNG bytes of a decoded image.
"""
import io
import os

import numpy as np

from utils.cli import BadInput

SUPPORTED_MODES = {"RGB": 3, "L": 1}


def load_image(path):
    """Read an 8-bit RGB or grayscale image: returns (uint8 (H, W, C), mode)."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        raise BadInput(f"no such file: {path}")
    if os.path.isdir(path):
        raise BadInput(f"{path} is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise BadInput(f"{path} is an empty file (0 bytes), not an image")
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise BadInput(f"{path}: multi-frame images are not supported")
            rawmode = img.tile[0][3] if img.tile and len(img.tile[0]) > 3 else ""
            rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") or ";16" in str(rawmode):
                raise BadInput(f"{path}: 16-bit and 32-bit images are not supported (8-bit RGB or grayscale only)")
            if img.mode not in SUPPORTED_MODES:
                what = {"P": "palette", "RGBA": "RGBA (alpha)", "LA": "grayscale+alpha",
                        "1": "1-bit", "CMYK": "CMYK"}.get(img.mode, img.mode)
                raise BadInput(f"{path}: {what} images are not supported; "
                               "convert to 8-bit RGB or grayscale first")
            img.load()
            mode = img.mode
            array = np.asarray(img, dtype=np.uint8)
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(f"{path} is not an image file this program can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"{path}: truncated or damaged image ({str(exc).splitlines()[0]})") from None
    if array.size == 0:
        raise BadInput(f"{path}: empty image ({array.shape[1]}x{array.shape[0]})")
    return (array[:, :, None] if array.ndim == 2 else array), mode


def png_bytes(image, mode):
    """A PNG file of the (H, W, C) image in ``mode`` (RGB or L)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[:, :, 0] if mode == "L" else image)).save(buf, format="PNG")
    return buf.getvalue()
