"""C2PA manifests: sign an encoded image with a `c2pa.created` / trainedAlgorithmicMedia claim, and read one.

The manifest has the claim generator "Likeness", one action, no ingredients and no thumbnail. Signing
is offline unless a timestamp authority URL is configured. C2PA validators refuse self-signed signing
certificates, so the certificate file must hold a chain (leaf first) issued by a CA.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import c2pa

from engine.provenance.metadata import TRAINED_ALGORITHMIC_MEDIA

CLAIM_GENERATOR = "Likeness"
CREATED = "c2pa.created"
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "mp4": "video/mp4"}

MANIFEST = {
    "claim_generator_info": [{"name": CLAIM_GENERATOR}],
    "assertions": [
        {
            "label": "c2pa.actions",
            "data": {"actions": [{"action": CREATED, "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}]},
        }
    ],
}
SIGN_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


@dataclass(frozen=True)
class C2paReading:
    """What a C2PA reader found: a manifest, whether it validates, whether its signer is trusted."""

    present: bool
    valid: bool | None = None  # signature and hashes check out (trust aside)
    trusted: bool | None = None  # the signer chains to a configured trust anchor
    ai_generated: bool | None = None  # the active manifest has c2pa.created + trainedAlgorithmicMedia
    issues: tuple[str, ...] = ()  # validation status codes, e.g. "signingCredential.untrusted"


def sign(data: bytes, output_format: str, cert: Path, key: Path, tsa_url: str | None = None) -> bytes:
    """Return `data` (an encoded PNG, JPEG or MP4) with an embedded, signed C2PA manifest."""
    mime = MIME_TYPES[output_format]
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, cert.read_bytes(), key.read_bytes(), tsa_url)
    with (
        c2pa.Signer.from_info(info) as signer,
        c2pa.Context.from_dict(SIGN_SETTINGS) as context,
        c2pa.Builder(MANIFEST, context) as builder,
    ):
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def read(data: bytes, mime: str, trust_anchors: Path | None = None) -> C2paReading:
    """Read and validate the C2PA manifest in `data`. Without trust anchors no signer is trusted."""
    settings = {"verify": {"verify_trust": True}}
    if trust_anchors is not None:
        settings["trust"] = {"trust_anchors": trust_anchors.read_text()}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=context)
            if reader is None:
                return C2paReading(present=False)
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as error:  # a damaged or foreign manifest: there, but not valid
        return C2paReading(present=True, valid=False, trusted=False, issues=(type(error).__name__,))
    state = store.get("validation_state")
    codes = tuple(status.get("code", "") for status in store.get("validation_status", []))
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    return C2paReading(
        present=True,
        valid=state in ("Valid", "Trusted"),
        trusted=state == "Trusted",
        ai_generated=_declares_ai_creation(manifest),
        issues=codes,
    )


def _declares_ai_creation(manifest: dict) -> bool:
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("action") == CREATED and action.get("digitalSourceType") == (
                    TRAINED_ALGORITHMIC_MEDIA
                ):
                    return True
    return False
