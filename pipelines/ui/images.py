"""Images on the page, made safe to show: stored image bytes (a quarantined file, an
evaluation example) are untrusted, so they never reach the browser as they are. Each is
decoded by Pillow (PNG only, its size checked before its pixels are), converted to plain
grayscale or RGB(A) pixels, scaled to the display box (small images upscaled by whole
multiples, nearest-neighbour, so each pixel stays a sharp square) and encoded again as a
new PNG without any of the original's chunks, inlined as a ``data:`` URI (the page's
Content-Security-Policy allows ``img-src data:``; nothing is fetched).

An image that cannot be shown gets no URI but the reason, which the page shows in a
placeholder.
"""

from __future__ import annotations

import base64
import io

MAX_BYTES = 512 * 1024  # larger files are not decoded for the page
MAX_PIXELS = 1024 * 1024  # nor larger images (checked from the header, before decoding)
DISPLAY = 84  # the display box, in pixels (28x28 shown at 3x)

_MODES = {"1": "L", "L": "L", "I;16": "L", "I": "L", "F": "L", "P": "RGBA", "LA": "RGBA", "RGB": "RGB",
          "RGBA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}


def display_png(data: bytes | None, box: int = DISPLAY) -> tuple[bytes | None, str | None]:
    """``(png, None)``: the image decoded and re-encoded for display; ``(None, why)`` when
    it cannot be shown."""
    from PIL import Image

    if data is None:
        return None, "no image"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, "not image bytes"
    data = bytes(data)
    if len(data) > MAX_BYTES:
        return None, f"too large to show ({len(data):,} bytes)"
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            width, height = img.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                return None, f"too large to show ({width}x{height})"
            img.load()
            mode = _MODES.get(img.mode)
            if mode is None:
                return None, f"cannot be shown (pixel mode {img.mode})"
            pixels = img.convert(mode)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the image's, not the page's
        return None, f"cannot be decoded ({type(err).__name__})"
    longest = max(width, height)
    if longest <= box:
        scale = box // longest
        pixels = pixels.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    else:
        pixels.thumbnail((box, box), Image.Resampling.BOX)
    out = io.BytesIO()
    pixels.save(out, format="PNG")
    return out.getvalue(), None


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def display_src(data: bytes | None, box: int = DISPLAY) -> tuple[str | None, str | None]:
    """``(data URI, None)`` for :func:`display_png`'s image, or ``(None, why)``."""
    png, why = display_png(data, box)
    return (data_uri(png), None) if png is not None else (None, why)
