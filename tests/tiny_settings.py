"""Settings for tests that run the whole product on the tiny model: small, fast, and independent of the
developer's own environment (no `LIKENESS_*` variable or `.env` leaks in)."""

from pathlib import Path

from engine.settings import Settings, load_settings

TINY_ENV = {
    "LIKENESS_ENGINE_MODEL": "tiny",
    "LIKENESS_ENGINE_DEVICE": "cpu",
    "LIKENESS_ENGINE_TRAIN_STEPS": "5",
    "LIKENESS_ENGINE_IMAGES_PER_REQUEST": "2",
    "LIKENESS_ENGINE_POLL_INTERVAL": "0.2",
    "LIKENESS_UPLOAD_MIN_PHOTOS": "3",
    # Tests drive one user faster than a person could; flood control has its own tests (test_public_*).
    "LIKENESS_ACCESS_FLOOD_PER_MINUTE": "6000",
    "LIKENESS_ACCESS_FLOOD_BURST": "1000",
}


def tiny_settings(data_dir: Path, **env: str) -> Settings:
    """The tiny-model settings with `data_dir`, plus any `LIKENESS_*` overrides given."""
    return load_settings({**TINY_ENV, "LIKENESS_DATA_DIR": str(data_dir), **env})
