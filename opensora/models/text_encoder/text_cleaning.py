"""Caption cleaning as upstream does before T5 (``opensora/models/text_encoder/t5.py``, from PixArt/DeepFloyd).

``text_preprocessing(text)`` = ``clean_caption`` applied twice (upstream's inference scripts do this
to every prompt; training encodes the captions as they are in the csv). The regular expressions
are upstream's, in the same order. Upstream needs two extra packages; this module uses them when
they are installed and otherwise a small stand-in, so results can differ only on unusual input:

* ``ftfy.fix_text`` -> :func:`fix_text`: repairs the common mojibake of UTF-8 read as
  cp1252/latin-1 (whole-string round trip only; ftfy also repairs mixed or partial mojibake),
  removes terminal escapes and control characters, straightens curly quotes, expands Latin
  ligatures, maps full-width ASCII to ASCII, normalises line breaks and applies NFC.
* ``BeautifulSoup(text, "html.parser").text`` -> :func:`html_to_text`: the standard library's
  ``html.parser`` (the parser that bs4 uses with "html.parser"), keeping text and dropping tags,
  comments and declarations, with entities decoded.
"""
from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse as ul
from html.parser import HTMLParser

try:  # upstream's dependency, used when present
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None

try:
    from bs4 import BeautifulSoup as _BeautifulSoup
except ImportError:  # pragma: no cover
    _BeautifulSoup = None

_MOJIBAKE = re.compile("[\u00c2\u00c3\u00c5\u00e2\u00ef][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
                       "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
_TERMINAL_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufeff\ufff9-\ufffc\u206a-\u206f]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
_WIDE = re.compile("[\u3000\uff01-\uff5e\ufb00-\ufb06]")  # full-width ASCII and Latin ligatures


def _fix_mojibake(text: str) -> str:
    if not _MOJIBAKE.search(text):
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
    return text


def fix_text(text: str) -> str:
    """``ftfy.fix_text`` when ftfy is installed, else the essential repairs listed in the module doc."""
    if _ftfy is not None:
        return _ftfy.fix_text(text)
    text = _fix_mojibake(text)
    text = _TERMINAL_ESCAPES.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = text.replace("\x85", "\n")
    text = _CONTROL.sub("", text)
    text = text.translate(_QUOTES)
    text = _WIDE.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return unicodedata.normalize("NFC", text)


class _TextCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(text: str) -> str:
    """``BeautifulSoup(text, "html.parser").text`` when bs4 is installed, else ``html.parser`` directly."""
    if _BeautifulSoup is not None:
        return _BeautifulSoup(text, features="html.parser").text
    parser = _TextCollector()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def basic_clean(text: str) -> str:
    text = fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


BAD_PUNCT_REGEX = re.compile(r"[" + "#®•©™&@·º½¾¿¡§~" + r"\)\(\]\[\}\{\|\\\/\*" + r"]{1,}")
_URL_1 = re.compile(r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)"
                    r"[\w/-]*\b\/?(?!@)))")
_URL_2 = re.compile(r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)"
                    r"[\w/-]*\b\/?(?!@)))")
_CJK_RANGES = (r"[\u31c0-\u31ef]+", r"[\u31f0-\u31ff]+", r"[\u3200-\u32ff]+", r"[\u3300-\u33ff]+",
               r"[\u3400-\u4dbf]+", r"[\u4dc0-\u4dff]+", r"[\u4e00-\u9fff]+")
_DASHES = re.compile(r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030"
                     r"\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+")
_SEPARATORS = re.compile(r"(?:\-|\_)")


def clean_caption(caption) -> str:
    """Upstream's ``clean_caption``: urls, html, @names, CJK, dashes, quotes, ids, file names, spam words..."""
    caption = str(caption)
    caption = ul.unquote_plus(caption)
    caption = caption.strip().lower()
    caption = re.sub("<person>", "person", caption)
    caption = _URL_1.sub("", caption)
    caption = _URL_2.sub("", caption)
    caption = html_to_text(caption)
    caption = re.sub(r"@[\w\d]+\b", "", caption)  # @<nickname>
    for cjk in _CJK_RANGES:  # CJK strokes, katakana extensions, enclosed, compatibility, ideographs
        caption = re.sub(cjk, "", caption)
    caption = _DASHES.sub("-", caption)  # every kind of dash -> "-"
    caption = re.sub(r"[`´«»“”¨]", '"', caption)
    caption = re.sub(r"[‘’]", "'", caption)
    caption = re.sub(r"&quot;?", "", caption)
    caption = re.sub(r"&amp", "", caption)
    caption = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", caption)  # ip addresses
    caption = re.sub(r"\d:\d\d\s+$", "", caption)  # article ids
    caption = re.sub(r"\\n", " ", caption)
    caption = re.sub(r"#\d{1,3}\b", "", caption)
    caption = re.sub(r"#\d{5,}\b", "", caption)
    caption = re.sub(r"\b\d{6,}\b", "", caption)
    caption = re.sub(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", "", caption)  # file names
    caption = re.sub(r"[\"\']{2,}", r'"', caption)
    caption = re.sub(r"[\.]{2,}", r" ", caption)
    caption = re.sub(BAD_PUNCT_REGEX, r" ", caption)
    caption = re.sub(r"\s+\.\s+", r" ", caption)
    if len(re.findall(_SEPARATORS, caption)) > 3:  # this-is-my-cute-cat / this_is_my_cute_cat
        caption = re.sub(_SEPARATORS, " ", caption)
    caption = basic_clean(caption)
    caption = re.sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", "", caption)  # jc6640
    caption = re.sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "", caption)  # jc6640vc
    caption = re.sub(r"\b\d+[a-zA-Z]+\d+\b", "", caption)  # 6640vc231
    caption = re.sub(r"(worldwide\s+)?(free\s+)?shipping", "", caption)
    caption = re.sub(r"(free\s)?download(\sfree)?", "", caption)
    caption = re.sub(r"\bclick\b\s(?:for|on)\s\w+", "", caption)
    caption = re.sub(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", "", caption)
    caption = re.sub(r"\bpage\s+\d+\b", "", caption)
    caption = re.sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", r" ", caption)  # j2d1a2a...
    caption = re.sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", "", caption)
    caption = re.sub(r"\b\s+\:\s+", r": ", caption)
    caption = re.sub(r"(\D[,\./])\b", r"\1 ", caption)
    caption = re.sub(r"\s+", " ", caption)
    caption = re.sub(r"^[\"\']([\w\W]+)[\"\']$", r"\1", caption)
    caption = re.sub(r"^[\'\_,\-\:;]", r"", caption)
    caption = re.sub(r"[\'\_,\-\:\-\+]$", r"", caption)
    caption = re.sub(r"^\.\S+$", "", caption)
    return caption.strip()


def text_preprocessing(text: str, use_text_preprocessing: bool = True) -> str:
    """Upstream's cleaning: ``clean_caption`` twice (as in training), or just lower-case and strip."""
    if use_text_preprocessing:
        return clean_caption(clean_caption(text))
    return text.lower().strip()
