"""IPTC Digital Source Type in XMP: the packet, the encoders that embed it, and a reader.

The IPTC Photo Metadata field "Digital Source Type" lives in XMP as `Iptc4xmpExt:DigitalSourceType`.
PNG carries XMP in an iTXt chunk keyed `XML:com.adobe.xmp`; JPEG in an APP1 segment that starts
with "http://ns.adobe.com/xap/1.0/\\0" (Pillow writes it with `xmp=`; its PNG writer has no `xmp=`).
The packet holds the source type and nothing else: no names, dates, software versions or ids.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

from PIL import Image
from PIL.PngImagePlugin import PngInfo

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
PNG_XMP_KEY = "XML:com.adobe.xmp"
JPEG_QUALITY = 95

XMP_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
    '  <rdf:Description rdf:about=""\n'
    f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"\n'
    f'    Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"/>\n'
    " </rdf:RDF>\n"
    "</x:xmpmeta>\n"
    '<?xpacket end="r"?>'
)


def encode(image: Image.Image, output_format: str) -> bytes:
    """Encode `image` as PNG or JPEG (4:4:4, quality 95) with the XMP packet and no other metadata."""
    out = io.BytesIO()
    if output_format == "png":
        info = PngInfo()
        info.add_itxt(PNG_XMP_KEY, XMP_PACKET, zip=False)
        image.save(out, "PNG", pnginfo=info)
    elif output_format == "jpeg":
        image.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0, xmp=XMP_PACKET.encode())
    else:
        raise ValueError(f"unsupported output format: {output_format!r}")
    return out.getvalue()


def read_xmp(image: Image.Image) -> str | None:
    """The XMP packet of an opened PNG or JPEG, as text, or None."""
    xmp = image.info.get("xmp")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", errors="replace")
    return xmp or None


def digital_source_type(xmp: str) -> str | None:
    """The `Iptc4xmpExt:DigitalSourceType` value of an XMP packet (attribute or element form), or None."""
    if re.search(r"<!(DOCTYPE|ENTITY)", xmp):  # no DTDs from untrusted files
        return None
    try:
        root = ET.fromstring(xmp.strip().lstrip("\ufeff"))
    except ET.ParseError:
        return None
    key = f"{{{IPTC_EXT_NS}}}DigitalSourceType"
    for element in root.iter():
        if key in element.attrib:
            return element.attrib[key]
        if element.tag == key:
            return element.get(f"{{{RDF_NS}}}resource") or (element.text or "").strip() or None
    return None
