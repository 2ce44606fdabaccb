"""An optional, subtle visible mark: small "AI" text in the bottom-right corner."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

TEXT = "AI"
OPACITY = 0.6  # of the white text; a faint dark outline keeps it readable on light backgrounds


def add_mark(image: Image.Image, text: str = TEXT) -> Image.Image:
    """Return an RGB copy of `image` with `text` drawn small in its bottom-right corner."""
    base = image.convert("RGBA")
    size = max(12, round(min(base.size) * 0.03))
    font = ImageFont.load_default(size=size)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    margin = size // 2
    position = (base.width - margin - (right - left) - left, base.height - margin - (bottom - top) - top)
    alpha = round(255 * OPACITY)
    draw.text(
        position,
        text,
        font=font,
        fill=(255, 255, 255, alpha),
        stroke_width=1,
        stroke_fill=(0, 0, 0, alpha // 2),
    )
    return Image.alpha_composite(base, overlay).convert("RGB")
