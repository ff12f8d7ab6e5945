"""Validates one source file as an image and gives the JPEG bytes to store.

Every file is decoded once with PIL (all of its pixels, so a truncated file
fails here rather than in training). What is stored:

  * an RGB or greyscale JPEG no larger than `max_side`: its bytes unchanged
    (the pipeline's `decode` and `decode_jpeg_and_inception_crop` read them
    as they are);
  * any other image PIL decodes (PNG, GIF, BMP, WebP, CMYK JPEG, ...): its
    first frame converted to RGB and encoded as JPEG, because the training
    pipeline's fused crop decodes JPEG only;
  * with `max_side` set, a larger image: resized (bicubic, aspect ratio
    kept) so that its longer side is `max_side`, then encoded as JPEG.

A file PIL cannot decode (truncated, corrupt, not an image) is not stored:
`check` returns its reason instead.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from typing import Optional

from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # A truncated file is an error, not grey.
Image.MAX_IMAGE_PIXELS = None  # Large scans are images, not decompression bombs.

_KEPT_MODES = ('RGB', 'L')


@dataclasses.dataclass(frozen=True)
class Checked:
  """What to store for one file: JPEG bytes, or None and the reason it is skipped."""

  jpeg: Optional[bytes]
  reason: str = ''  # Why it is skipped ('' when stored).
  reencoded: bool = False  # True when `jpeg` is not the source's bytes.


def check(data: bytes, max_side: int = 0, quality: int = 95) -> Checked:
  """Decodes `data`; returns the JPEG to store, or the reason it is skipped."""
  if not data:
    return Checked(None, 'empty file')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # EXIF and palette warnings are not errors.
      image = Image.open(io.BytesIO(data))
      image_format = image.format
      image.load()
  except Image.DecompressionBombError as e:  # pragma: no cover - disabled above.
    return Checked(None, f'not decodable: {e}')
  except Image.UnidentifiedImageError:  # Its message names a memory address.
    return Checked(None, 'not decodable: no image format PIL knows')
  except (OSError, SyntaxError, ValueError) as e:
    return Checked(None, f'not decodable: {str(e).splitlines()[0] if str(e) else type(e).__name__}')
  width, height = image.size
  if width < 1 or height < 1:
    return Checked(None, f'empty image ({width}x{height})')
  too_large = max_side > 0 and max(width, height) > max_side
  if image_format == 'JPEG' and image.mode in _KEPT_MODES and not too_large:
    return Checked(data)
  if image.mode != 'RGB':
    image = image.convert('RGB')
  if too_large:
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.BICUBIC)
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=quality)
  return Checked(out.getvalue(), reencoded=True)
