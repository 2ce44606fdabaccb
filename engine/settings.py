"""Settings: `config/default.toml`, overridden by `.env` and `LIKENESS_*` environment variables.

Every setting has exactly one default, in `config/default.toml`; the dataclasses below only give each one a
type. A bad value fails at start-up with one line naming the setting (`SettingsError`). A chat platform's
section (`[telegram]`, `[discord]`) is typed by its adapter in `bot/`, through `Settings.platform(name)`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULTS_FILE = CONFIG_DIR / "default.toml"
ENV_PREFIX = "LIKENESS_"
T = TypeVar("T")


class SettingsError(Exception):
    """A setting is missing or malformed. `str()` is one line meant for the operator."""


class Duration(float):
    """Seconds, written as `30s`, `15m`, `24h` or `7d` (or a plain number of seconds)."""


class OptionalDuration(float):
    """A `Duration` that may also be `off` (stored as 0)."""


class Url(str):
    """An http(s) URL with a host, e.g. `https://api.telegram.org`."""


_URL = re.compile(r"^https?://[^/\s]+")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """Parse `30s`, `15m`, `24h`, `7d` into seconds; raises ValueError with a readable reason."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like 30s, 15m, 24h or 7d, got {str(text)!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact form of a duration for people: 90 -> '90 seconds', 86400 -> '1 day'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{int(seconds)} seconds"


@dataclass(frozen=True)
class Section:
    """A `[name]` table the engine does not read itself (a platform's), with its environment overrides.

    Its owner types it with `read(cls)`: the same conversions, `LIKENESS_<NAME>_<KEY>` names and one-line
    errors as every other setting. The engine never looks inside.
    """

    name: str
    table: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    def read(self, cls: type[T]) -> T:
        """The section as the dataclass `cls` (its fields are the section's keys)."""
        return _build(cls, dict(self.table), dict(self.env), self.name)


@dataclass(frozen=True)
class EngineSettings:
    model: str
    device: str
    dtype: str
    embedded_worker: bool
    kinds: str
    train_steps: int
    images_per_request: int
    candidates: int
    min_likeness: int
    adapter_cache: int
    motion_adapter: str
    lease: Duration
    max_attempts: int
    poll_interval: Duration
    presets: str
    max_queued: int

    @property
    def job_kinds(self) -> tuple[str, ...]:
        """The job kinds this worker takes; empty means all."""
        if self.kinds.strip().lower() == "all":
            return ()
        return tuple(kind.strip() for kind in self.kinds.split(",") if kind.strip())

    @property
    def presets_path(self) -> Path:
        path = Path(self.presets)
        return path if path.is_absolute() else CONFIG_DIR / path


@dataclass(frozen=True)
class UploadSettings:
    min_photos: int
    max_photos: int
    max_mb: int
    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class RetentionSettings:
    photos: Duration
    model: Duration
    outputs: Duration
    messages: OptionalDuration
    jobs: Duration
    sweep_interval: Duration


@dataclass(frozen=True)
class ProvenanceSettings:
    deployment_id: str
    invisible_watermark: bool
    visible_watermark: bool
    c2pa_cert: str
    c2pa_key: str
    deliver_as: str


@dataclass(frozen=True)
class AccessSettings:
    mode: str
    allow: str
    operators: str
    flood_per_minute: int
    flood_burst: int


@dataclass(frozen=True)
class QuotaSettings:
    trainings: int
    trainings_period: Duration
    requests: int
    requests_period: Duration
    videos: int
    videos_period: Duration


@dataclass(frozen=True)
class MetricsSettings:
    address: str


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    master_key: str
    log_level: str
    operator_contact: str
    database_url: str
    keystore_url: str
    blobs_url: str
    engine: EngineSettings
    upload: UploadSettings
    retention: RetentionSettings
    provenance: ProvenanceSettings
    access: AccessSettings
    quota: QuotaSettings
    metrics: MetricsSettings

    # Every other [table] of the settings file: a platform's section, typed by its adapter (bot/).
    platforms: Mapping[str, Section] = field(default_factory=dict)

    def platform(self, name: str) -> Section:
        """The `[name]` section (empty when the file has none: reading it then names the missing keys)."""
        return self.platforms.get(name) or Section(name)


ACCESS_MODES = ("open", "invite", "allowlist")
PLATFORMS = ("telegram", "discord", "console")


def parse_platform_ids(text: str) -> list[tuple[str, str]]:
    """`telegram:123, discord:456` -> [("telegram", "123"), ("discord", "456")]; ValueError if malformed."""
    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        platform, _, user = item.partition(":")
        platform, user = platform.strip().lower(), user.strip()
        if platform not in PLATFORMS or not user or not re.fullmatch(r"[\w.-]+", user):
            raise ValueError(f"expected entries like telegram:123 or discord:456, got {item!r}")
        entries.append((platform, user))
    return entries


def parse_address(text: str) -> tuple[str, int] | None:
    """`127.0.0.1:9464` -> ("127.0.0.1", 9464); empty -> None (off); ValueError if malformed."""
    if not text.strip():
        return None
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {text!r}")
    return host.strip("[]"), int(port)


def _convert(kind: Any, value: Any, name: str) -> Any:
    """Turn a TOML or environment value into `kind`, or raise SettingsError naming the setting."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected a whole number, got {value!r}")
            if isinstance(value, float):
                return int(value)  # a whole TOML float such as 20.0
            try:
                return int(str(value).strip())
            except ValueError:
                raise ValueError(f"expected a whole number, got {value!r}") from None
        if kind is Duration:
            seconds = parse_duration(value)
            if seconds <= 0:
                raise ValueError("must be longer than 0s")
            return Duration(seconds)
        if kind is OptionalDuration:
            if str(value).strip().lower() in {"off", "0", ""}:
                return OptionalDuration(0)
            return OptionalDuration(parse_duration(value))
        if kind is Path:
            return Path(str(value)).expanduser()
        if kind is Url:
            if not _URL.match(str(value)):
                raise ValueError(f"expected an http(s) URL, got {str(value)!r}")
            return Url(str(value))
        return str(value)
    except ValueError as error:
        raise SettingsError(f"setting {name}: {error}") from None


def _env_name(section: str | None, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper() + '_' if section else ''}{key.upper()}"


def _build(cls: type, table: dict[str, Any], env: dict[str, str], section: str | None, **given: Any) -> Any:
    """`cls` from a table and the environment; `given` fields are passed through as they are."""
    if not isinstance(table, dict):
        raise SettingsError(f"setting {section}: expected a [{section}] table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)} - set(given)
    unknown = sorted(set(table) - known)
    if unknown:
        where = f"[{section}] " if section else ""
        raise SettingsError(f"setting {where}{unknown[0]}: unknown setting (check the spelling)")
    values: dict[str, Any] = dict(given)
    for f in fields(cls):
        if f.name in given:
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
            values[f.name] = _build(kind, table.get(f.name, {}), env, f.name)
            continue
        env_name = _env_name(section, f.name)
        if env_name in env:
            raw = env[env_name]
        elif f.name in table:
            raw = table[f.name]
        else:
            raise SettingsError(f"setting {env_name}: missing from {DEFAULTS_FILE.name}")
        values[f.name] = _convert(kind, raw, env_name)
    return cls(**values)


def _validate(settings: Settings) -> None:
    upload, engine = settings.upload, settings.engine
    checks = [
        (upload.min_photos >= 1, "LIKENESS_UPLOAD_MIN_PHOTOS", "must be at least 1"),
        (upload.max_photos >= upload.min_photos, "LIKENESS_UPLOAD_MAX_PHOTOS", "must be >= min_photos"),
        (upload.max_mb >= 1, "LIKENESS_UPLOAD_MAX_MB", "must be at least 1"),
        (upload.min_side >= 64, "LIKENESS_UPLOAD_MIN_SIDE", "must be at least 64"),
        (upload.max_pixels >= upload.min_side**2, "LIKENESS_UPLOAD_MAX_PIXELS", "is below min_side squared"),
        (engine.train_steps >= 0, "LIKENESS_ENGINE_TRAIN_STEPS", "must be 0 (default) or more"),
        (1 <= engine.images_per_request <= 10, "LIKENESS_ENGINE_IMAGES_PER_REQUEST", "must be 1..10"),
        (1 <= engine.candidates <= 8, "LIKENESS_ENGINE_CANDIDATES", "must be 1..8"),
        (0 <= engine.min_likeness <= 100, "LIKENESS_ENGINE_MIN_LIKENESS", "must be 0..100"),
        (engine.adapter_cache >= 1, "LIKENESS_ENGINE_ADAPTER_CACHE", "must be at least 1"),
        (
            bool(engine.motion_adapter.strip()),
            "LIKENESS_ENGINE_MOTION_ADAPTER",
            "must be auto, off, tiny, an id or a folder",
        ),
        (engine.max_attempts >= 1, "LIKENESS_ENGINE_MAX_ATTEMPTS", "must be at least 1"),
        (engine.max_queued >= 1, "LIKENESS_ENGINE_MAX_QUEUED", "must be at least 1"),
        (settings.access.mode in ACCESS_MODES, "LIKENESS_ACCESS_MODE", "must be open, invite or allowlist"),
        (settings.access.flood_per_minute >= 1, "LIKENESS_ACCESS_FLOOD_PER_MINUTE", "must be at least 1"),
        (settings.access.flood_burst >= 1, "LIKENESS_ACCESS_FLOOD_BURST", "must be at least 1"),
        (settings.quota.trainings >= 0, "LIKENESS_QUOTA_TRAININGS", "must be 0 (no limit) or more"),
        (settings.quota.requests >= 0, "LIKENESS_QUOTA_REQUESTS", "must be 0 (no limit) or more"),
        (settings.quota.videos >= 0, "LIKENESS_QUOTA_VIDEOS", "must be 0 (no limit) or more"),
        (engine.presets_path.is_file(), "LIKENESS_ENGINE_PRESETS", f"no such file: {engine.presets_path}"),
        (
            settings.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
            "LIKENESS_LOG_LEVEL",
            "must be DEBUG, INFO, WARNING or ERROR",
        ),
        (
            settings.provenance.deliver_as in {"files", "photos", "both"},
            "LIKENESS_PROVENANCE_DELIVER_AS",
            "must be files, photos or both",
        ),
        (
            bool(settings.provenance.c2pa_cert) == bool(settings.provenance.c2pa_key),
            "LIKENESS_PROVENANCE_C2PA_KEY",
            "set both c2pa_cert and c2pa_key, or neither",
        ),
    ]
    for ok, name, problem in checks:
        if not ok:
            raise SettingsError(f"setting {name}: {problem}")
    for name, text, parse in (
        ("LIKENESS_ACCESS_ALLOW", settings.access.allow, parse_platform_ids),
        ("LIKENESS_ACCESS_OPERATORS", settings.access.operators, parse_platform_ids),
        ("LIKENESS_METRICS_ADDRESS", settings.metrics.address, parse_address),
    ):
        try:
            parse(text)
        except ValueError as error:
            raise SettingsError(f"setting {name}: {error}") from None


def _sections(table: dict[str, Any], env: dict[str, str]) -> dict[str, Section]:
    """The tables that are not the engine's own settings: platforms' sections, read by their adapters."""
    own = {f.name for f in fields(Settings)}
    return {
        name: Section(name, value, {k: v for k, v in env.items() if k.startswith(_env_name(name, ""))})
        for name, value in table.items()
        if name not in own and isinstance(value, dict)
    }


JOB_KINDS = ("train", "generate", "video")
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def _same_database(a: str, b: str) -> bool:
    """Two database URLs that name the same database (host, port and database name alike)."""
    from urllib.parse import urlsplit

    def key(url: str) -> tuple[str, int, str]:
        parts = urlsplit(url)
        return ((parts.hostname or "localhost").lower(), parts.port or 5432, parts.path.strip("/"))

    return key(a) == key(b)


def _validate_scale_out(settings: Settings) -> None:
    """The settings for running beyond one machine (database, key store, blobs, worker kinds)."""
    if settings.database_url and not settings.database_url.startswith(DATABASE_SCHEMES):
        raise SettingsError("setting LIKENESS_DATABASE_URL: expected a postgresql:// URL (or empty)")
    if settings.keystore_url and not settings.keystore_url.startswith(DATABASE_SCHEMES):
        raise SettingsError("setting LIKENESS_KEYSTORE_URL: expected a postgresql:// URL (or empty)")
    if settings.database_url and not settings.keystore_url:
        raise SettingsError(
            "setting LIKENESS_KEYSTORE_URL: required with LIKENESS_DATABASE_URL (a different database, so "
            "that a backup of the main database never holds keys)"
        )
    if settings.database_url and _same_database(settings.database_url, settings.keystore_url):
        raise SettingsError(
            "setting LIKENESS_KEYSTORE_URL: must name a different database than LIKENESS_DATABASE_URL, so "
            "that a backup of the main database never holds keys"
        )
    if settings.blobs_url and not re.match(
        r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", settings.blobs_url
    ):
        raise SettingsError(
            "setting LIKENESS_BLOBS_URL: expected s3://bucket or s3://bucket/prefix (or empty)"
        )
    unknown = [kind for kind in settings.engine.job_kinds if kind not in JOB_KINDS]
    if unknown:
        raise SettingsError(
            f"setting LIKENESS_ENGINE_KINDS: unknown job kind {unknown[0]!r} (use all or {', '.join(JOB_KINDS)})"
        )


def load_settings(env: dict[str, str] | None = None, defaults_file: Path = DEFAULTS_FILE) -> Settings:
    """Read the defaults, then `.env` in the working directory, then the environment (which wins)."""
    if env is None:
        from dotenv import dotenv_values

        env = {k: v for k, v in dotenv_values(".env").items() if v is not None}
        env.update(os.environ)
    try:
        table = tomllib.loads(defaults_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"settings file {defaults_file}: {error}") from None
    platforms = _sections(table, env)
    engine_table = {key: value for key, value in table.items() if key not in platforms}
    settings = _build(Settings, engine_table, env, None, platforms=platforms)
    _validate(settings)
    _validate_scale_out(settings)
    return settings
