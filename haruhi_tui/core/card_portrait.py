"""A portrait for a character card when the character has no picture of its own.

A card is shown by its picture in every card browser, so a character without one gets a generated portrait:
a two-colour gradient picked from the character's folder name (the same character always gets the same
colours), a disc with the initial, and the name written along the bottom. The name is drawn with a font that
has its glyphs: a CJK font found on the system for 凉宫春日, else DejaVu or Pillow's own font; when no font can
write the name, the portrait shows the folder name and its initials instead (``haruhi``, ``H``).
``$HARUHI_CARD_FONT`` names a font file to use first.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import os
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = (400, 600)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts", "/Library/Fonts",
             "/System/Library/Fonts", "~/Library/Fonts", "C:/Windows/Fonts")
#: File-name fragments (lower case) of fonts that cover Chinese/Japanese/Korean, best first.
CJK_FONTS = ("notosanscjk", "notoserifcjk", "sourcehansans", "sourcehanserif", "notosanssc", "notosanstc",
             "notosansjp", "notosanskr", "wqy-microhei", "wqy-zenhei", "droidsansfallback", "msyh", "simhei",
             "simsun", "pingfang", "hiragino", "arialuni", "ukai", "uming", "unifont")
LATIN_FONTS = ("dejavusans-bold", "dejavusans", "liberationsans-bold", "liberationsans", "notosans-bold",
               "notosans-regular", "arialbd", "arial", "helvetica")
_PROBE = "\U0010fffd"  # a private-use code point no font draws: its glyph is the font's "missing" box
_MAX_FONT_FILES = 5000


@functools.lru_cache(maxsize=1)
def _font_files() -> tuple[Path, ...]:
    """Font files under the usual folders (bounded, cached: the walk happens once per process)."""
    found: list[Path] = []
    for folder in FONT_DIRS:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            found.extend(Path(dirpath) / f for f in files if f.lower().endswith((".ttf", ".otf", ".ttc")))
            if len(found) > _MAX_FONT_FILES:
                return tuple(found)
    return tuple(found)


def _ranked(fragments: tuple[str, ...]) -> list[Path]:
    files = _font_files()
    ranked: list[Path] = []
    for fragment in fragments:
        ranked.extend(sorted(f for f in files if fragment in f.name.lower().replace(" ", "") and f not in ranked))
    return ranked


def _load(path: Path | str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return None


def draws(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> bool:
    """Whether ``font`` has a glyph for every visible character of ``text`` (a missing one renders as the
    same box as a code point no font has)."""
    missing = font.getmask(_PROBE)
    signature = (missing.size, bytes(missing))
    for char in set(text):
        if char.isspace() or unicodedata.category(char).startswith(("C", "Z")):
            continue
        mask = font.getmask(char)
        if (mask.size, bytes(mask)) == signature:
            return False
    return True


def font_for(text: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont | None:
    """The first font that can write ``text``: $HARUHI_CARD_FONT, CJK fonts, Latin fonts, Pillow's own."""
    candidates: list[Path | str] = []
    if os.environ.get("HARUHI_CARD_FONT"):
        candidates.append(os.environ["HARUHI_CARD_FONT"])
    wide = any(ord(c) > 0x2FF for c in text)
    candidates += _ranked(CJK_FONTS + LATIN_FONTS) if wide else _ranked(LATIN_FONTS + CJK_FONTS)
    for path in candidates[:12]:
        font = _load(path, size)
        if font is not None and draws(font, text):
            return font
    default = ImageFont.load_default(size)
    return default if draws(default, text) else None


def initials(text: str) -> str:
    """Up to two initials: ``Luna Lovegood`` -> ``LL``, ``haruhi`` -> ``H``, ``raidenShogun`` -> ``RS``."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in text).split() if w]
    if len(words) == 1:
        capitals = [c for c in words[0][1:] if c.isupper()]
        return (words[0][0] + (capitals[0] if capitals else "")).upper()
    return "".join(w[0] for w in words[:2]).upper()


def palette(seed: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two related colours for ``seed``: a soft light tone over a deeper one of a nearby hue."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    hue = digest[0] / 255
    top = colorsys.hls_to_rgb(hue, 0.78, 0.55)
    bottom = colorsys.hls_to_rgb((hue + 0.08 + digest[1] / 255 * 0.1) % 1.0, 0.38, 0.5)
    return tuple(round(v * 255) for v in top), tuple(round(v * 255) for v in bottom)  # type: ignore[return-value]


def portrait_png(name: str, seed: str) -> bytes:
    """A 400x600 PNG portrait for ``name`` (colours from ``seed``, the folder name)."""
    width, height = SIZE
    top, bottom = palette(seed)
    gradient = Image.linear_gradient("L").resize(SIZE)
    image = Image.composite(Image.new("RGB", SIZE, bottom), Image.new("RGB", SIZE, top), gradient)

    glow = Image.new("L", SIZE, 0)
    ImageDraw.Draw(glow).ellipse((60, 90, width - 60, height - 150), fill=110)
    image = Image.composite(Image.new("RGB", SIZE, (255, 255, 255)), image, glow.filter(ImageFilter.GaussianBlur(40)))

    draw = ImageDraw.Draw(image)
    cx, cy, r = width // 2, 250, 110
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=bottom, outline=(255, 255, 255), width=6)

    name_font = font_for(name, 46)
    mark = name.strip()[:1] if name_font is not None and any(ord(c) > 0x2FF for c in name) else initials(name)
    mark_font = font_for(mark, 120 if len(mark) == 1 else 96)
    if mark_font is None:  # nothing can write the name: initials of the folder name (Latin)
        mark = initials(seed) or "?"
        mark_font = font_for(mark, 120 if len(mark) == 1 else 96) or ImageFont.load_default(96)
    draw.text((cx, cy), mark, font=mark_font, fill=(255, 255, 255), anchor="mm")

    band = Image.new("L", SIZE, 0)
    ImageDraw.Draw(band).rectangle((0, height - 150, width, height), fill=90)
    image = Image.composite(Image.new("RGB", SIZE, (20, 20, 28)), image, band)
    draw = ImageDraw.Draw(image)
    label = name if name_font is not None else seed  # the folder name when no font writes the name
    label_font = name_font or font_for(label, 46)
    if label_font is not None:
        size = 46
        while draw.textlength(label, font=label_font) > width - 40 and size > 18:
            size -= 4
            label_font = font_for(label, size) or label_font
        draw.text((cx, height - 75), label, font=label_font, fill=(255, 255, 255), anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
