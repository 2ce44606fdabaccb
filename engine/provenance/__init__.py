"""Provenance: mark every result as AI-generated, and check images for those marks.

- `mark_image(image, config)`: invisible watermark + IPTC/XMP Digital Source Type + optional C2PA
  manifest + optional visible mark; returns the final encoded bytes.
- `verify_image(data)` / `verify_main(argv)`: report which marks an image carries.
"""

from engine.provenance.marking import ProvenanceConfig, mark_image
from engine.provenance.verify import MarkReport, verify_image, verify_main

__all__ = ["MarkReport", "ProvenanceConfig", "mark_image", "verify_image", "verify_main"]
