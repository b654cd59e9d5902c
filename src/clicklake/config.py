"""One typed, frozen settings object.

Precedence, highest first: flags (keyword arguments to :func:`load_settings`), environment
variables ``CLICKLAKE_<SECTION>__<KEY>``, ``clicklake.toml`` (or ``--config PATH``), defaults.
With no file at all the embedded defaults apply and everything lives under ``./clicklake-data``.
"""

from __future__ import annotations

import os
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from clicklake.exceptions import ConfigError

DEFAULT_CONFIG_FILE = "clicklake.toml"
ENV_PREFIX = "CLICKLAKE_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(_Section):
    data_dir: Path = Path("./clicklake-data")
    catalog_uri: str = ""
    warehouse: str = ""
    catalog_name: str = "clicklake"
    namespace: str = "clicklake"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def catalog_db(self) -> Path:
        return self.data_dir / "catalog.db"

    def resolved_catalog_uri(self) -> str:
        """The SQLAlchemy URI of the Iceberg SQL catalog (SQLite in ``data_dir`` by default)."""
        return self.catalog_uri or f"sqlite:///{self.catalog_db.resolve()}"

    def resolved_warehouse(self) -> str:
        """Where table data lives: ``warehouse`` if set, else ``data_dir/warehouse``."""
        if self.warehouse:
            return self.warehouse
        return (self.data_dir / "warehouse").resolve().as_uri()


class CollectorSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log: Literal["spool", "kafka"] = "spool"
    write_keys: dict[str, str] = Field(default_factory=lambda: {"wk_demo": "demo-shop"})
    max_event_bytes: int = Field(default=32 * 1024, gt=0)
    max_request_bytes: int = Field(default=500 * 1024, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    max_queue_lines: int = Field(default=20_000, ge=0)
    max_queue_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    group_commit_max_lines: int = Field(default=5_000, gt=0)
    group_commit_max_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    retry_after_s: int = Field(default=1, ge=0)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = Field(default="clicklake.events", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    # Created with these when missing (by the collector or the Kafka source).
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    group_id: str = Field(default="clicklake", min_length=1)
    # "spool": each message is a collector envelope; "segment": a bare Segment call or batch.
    envelope: Literal["spool", "segment"] = "spool"
    # The collector answers 503 when a message is not acknowledged (acks=all) within this.
    produce_timeout_s: float = Field(default=5.0, gt=0)
    linger_ms: float = Field(default=2.0, ge=0)
    # Extra librdkafka properties, e.g. {"security.protocol" = "SASL_SSL"}.
    producer: dict[str, str] = Field(default_factory=dict)
    consumer: dict[str, str] = Field(default_factory=dict)


class SpoolSettings(_Section):
    segment_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    segment_max_age_s: float = Field(default=60.0, gt=0)


class PipelineSettings(_Section):
    pipeline_id: str = Field(default="main", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    commit_interval_s: float = Field(default=10.0, gt=0)
    commit_max_events: int = Field(default=200_000, gt=0)
    commit_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # 32 MB: two chunks decode and enrich at once (engines/local.py). Each chunk costs the
    # enrichment steps a fixed share of Python (per batch, and per distinct value in it), so
    # bigger chunks run the full chain ~8 % faster than 16 MB; 64 MB took the full chain's peak
    # memory past 1.5 GB, 32 MB holds it near 1.3 GB.
    read_chunk_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024)
    default_app_id: str = "default"
    max_future_s: float = Field(default=24 * 3600.0, ge=0)
    max_age_days: float = Field(default=365.0, gt=0)
    event_buckets: int = Field(default=16, ge=1, le=4096)
    commit_retries: int = Field(default=8, ge=0)
    promote_properties: dict[str, Literal["string", "long", "int", "double", "bool", "ts"]] = Field(
        default_factory=dict
    )


class ConversionSettings(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    condition: str
    value: str = ""


def _default_conversions() -> list[ConversionSettings]:
    return [ConversionSettings(name="order", condition="event_name = 'Order Completed'", value="revenue")]


class UrlRuleSettings(_Section):
    pattern: str
    alias: str


class ModelsSettings(_Section):
    session_gap_minutes: float = Field(default=30.0, gt=0)
    bounce: Literal["single_pageview", "not_engaged", "min_duration"] = "single_pageview"
    timezone: str = "UTC"
    conversions: list[ConversionSettings] = Field(default_factory=_default_conversions)
    include_bots: bool = False
    max_session_length_hours: float = Field(default=24.0, gt=0)
    split_at_midnight: bool = False
    bounce_min_duration_s: float = Field(default=10.0, ge=0)
    engaged_min_duration_s: float = Field(default=10.0, ge=0)
    page_ping_heartbeat_s: float = Field(default=10.0, gt=0)
    page_ping_min_visit_s: float = Field(default=10.0, ge=0)
    url_rules: list[UrlRuleSettings] = Field(default_factory=list)
    build_every_commits: int = Field(default=0, ge=0)


class TokenSettings(_Section):
    apps: list[str] = Field(default_factory=list)
    pii: bool = False
    sql: bool = False
    admin: bool = False
    # Shown in the audit log instead of the token itself (default: a hash prefix of the token).
    name: str = ""
    # After this instant (ISO 8601; naive means UTC) the token is refused with 401.
    expires: datetime | None = None


class ApiSettings(_Section):
    tokens: dict[str, TokenSettings] = Field(default_factory=dict)
    statement_timeout_s: float = Field(default=10.0, gt=0)
    memory_limit: str = Field(default="2GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    threads: int = Field(default=2, ge=1)
    max_rows: int = Field(default=10_000, ge=1)
    audit_flush_s: float = Field(default=5.0, gt=0)
    refresh_s: float = Field(default=5.0, ge=0)
    mask_salt: SecretStr = SecretStr("")
    cache_entries: int = Field(default=512, ge=0)
    funnel_index_days: int = Field(default=90, ge=0)


class _Step(_Section):
    enabled: bool = True


class UrlEnrichSettings(_Step):
    pass


class DedupEnrichSettings(_Step):
    window_hours: float = Field(default=24.0, gt=0)


class BotsEnrichSettings(_Step):
    pass


class UserAgentEnrichSettings(_Step):
    pass


class ReferrerEnrichSettings(_Step):
    internal_domains: list[str] = Field(default_factory=list)


class CampaignEnrichSettings(_Step):
    pass


class GeoIpEnrichSettings(_Step):
    mmdb: str = ""


class UserDimensionEnrichSettings(_Step):
    enabled: bool = False
    source: str = ""
    key: str = "user_id"
    columns: list[str] = Field(default_factory=list)


class IpAnonymizationEnrichSettings(_Step):
    ipv4_octets: int = Field(default=3, ge=0, le=4)
    ipv6_segments: int = Field(default=3, ge=0, le=8)


class PiiEnrichSettings(_Step):
    enabled: bool = False
    fields: list[str] = Field(default_factory=list)
    salt: SecretStr = SecretStr("")


class PluginSettings(_Section):
    """A user enricher: a dotted ``function = "pkg.mod:fn"``, or an installed package's
    ``entry_point`` (group ``clicklake.enrichers``); exactly one of the two."""

    function: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    entry_point: str | None = Field(default=None, min_length=1)
    after: str = "pii"

    @model_validator(mode="after")
    def _one_source(self) -> PluginSettings:
        if (self.function is None) == (self.entry_point is None):
            raise ValueError(
                'set exactly one of function = "pkg.module:fn" or entry_point = "<name>" '
                "(an entry point in the clicklake.enrichers group)"
            )
        return self


class EnrichSettings(_Section):
    """The enrichment chain; steps run in the order of the fields below."""

    url: UrlEnrichSettings = Field(default_factory=UrlEnrichSettings)
    dedup: DedupEnrichSettings = Field(default_factory=DedupEnrichSettings)
    bots: BotsEnrichSettings = Field(default_factory=BotsEnrichSettings)
    useragent: UserAgentEnrichSettings = Field(default_factory=UserAgentEnrichSettings)
    referrer: ReferrerEnrichSettings = Field(default_factory=ReferrerEnrichSettings)
    campaign: CampaignEnrichSettings = Field(default_factory=CampaignEnrichSettings)
    geoip: GeoIpEnrichSettings = Field(default_factory=GeoIpEnrichSettings)
    user_dimension: UserDimensionEnrichSettings = Field(default_factory=UserDimensionEnrichSettings)
    ip_anonymization: IpAnonymizationEnrichSettings = Field(default_factory=IpAnonymizationEnrichSettings)
    pii: PiiEnrichSettings = Field(default_factory=PiiEnrichSettings)
    plugins: list[PluginSettings] = Field(default_factory=list)


class SparkSettings(_Section):
    """The Spark engine (``--engine spark``, ``models build --engine spark``)."""

    master: str = "local[2]"
    remote: str = ""  # a Spark Connect URL (sc://host:15002); used instead of master when set
    conf: dict[str, str] = Field(default_factory=dict)  # passed to the session as is
    jars_dir: str = ""  # empty: .cache/jars/spark of the source tree (make spark-jars), if present
    checkpoint_dir: str = ""  # empty: data_dir/spark-checkpoints/<pipeline_id>-<source>
    trigger_interval_s: float = Field(default=10.0, gt=0)
    max_files_per_trigger: int = Field(default=0, ge=0)  # 0: no limit
    max_offsets_per_trigger: int = Field(default=0, ge=0)  # Kafka; 0: no limit


class MaintenanceSettings(_Section):
    """``clicklake maintain`` and its schedule inside ``clicklake serve``."""

    small_file_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    target_file_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    min_input_files: int = Field(default=5, ge=2)
    compact_commit_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    manifest_merge_count: int = Field(default=100, ge=2)
    snapshot_max_age_hours: float = Field(default=24.0, ge=0)
    keep_last_snapshots: int = Field(default=10, ge=1)
    orphan_min_age_hours: float = Field(default=72.0, ge=0)
    retention_events_days: int = Field(default=0, ge=0)
    retention_failed_events_days: int = Field(default=0, ge=0)
    retention_models_days: int = Field(default=0, ge=0)
    commit_retries: int = Field(default=4, ge=0)
    compact_every_s: float = Field(default=3600.0, ge=0)
    expire_every_s: float = Field(default=3600.0, ge=0)
    orphans_every_s: float = Field(default=86400.0, ge=0)
    retention_every_s: float = Field(default=86400.0, ge=0)


class Settings(BaseSettings):
    """Every setting of clicklake, grouped by section as in ``clicklake.toml``."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    storage: StorageSettings = Field(default_factory=StorageSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)

    @field_validator("storage")
    @classmethod
    def _data_dir_not_empty(cls, v: StorageSettings) -> StorageSettings:
        if not str(v.data_dir).strip():
            raise ValueError("data_dir must not be empty")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file is merged in load_settings (so we can name it in errors); here only
        # flags (init) and environment take part, flags first.
        return (init_settings, env_settings)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``CLICKLAKE_SECTION__KEY=value`` pairs as a nested dict (values stay strings)."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(path):
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = _env_value(value)
    return out


def _env_value(raw: str) -> Any:
    # Lists and tables (write_keys, tokens, conversions) may be given as JSON in env vars.
    stripped = raw.strip()
    if stripped[:1] in ("{", "["):
        import json

        try:
            return json.loads(stripped)
        except ValueError:
            return raw
    return raw


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            hint = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
            lines.append(f"  - {loc}: {hint}")
        else:
            lines.append(f"  - {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if fields else []


def load_settings(
    config_path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """Build the settings from defaults, the TOML file, the environment and flags.

    Args:
        config_path: A TOML file. ``None`` means ``./clicklake.toml`` if it exists, else none.
        environ: The environment to read ``CLICKLAKE_*`` variables from (default ``os.environ``).
        **flags: Overrides from the command line, as nested dicts per section
            (``pipeline={"commit_interval_s": 1}``); ``None`` values are ignored.

    Returns:
        The frozen settings.

    Raises:
        ConfigError: The file is missing or not TOML, or a key or value is wrong; the message
            names the key and what is allowed.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    path: Path | None
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing file to --config")
    else:
        path = Path(DEFAULT_CONFIG_FILE)
        if not path.is_file():
            path = None
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    env = _env_overrides(dict(os.environ if environ is None else environ))
    if env:
        origin += " + CLICKLAKE_* environment"
        data = _deep_merge(data, env)
    clean_flags = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in flags.items()}
    clean_flags = {k: v for k, v in clean_flags.items() if v}
    if clean_flags:
        origin += " + flags"
        data = _deep_merge(data, clean_flags)
    try:
        # Only pass explicit values: pydantic-settings must not re-read the environment.
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from exc
