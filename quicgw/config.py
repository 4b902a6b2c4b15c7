"""The gateway's TOML configuration, validated with pydantic.

A wrong key or value is a :class:`ConfigError` whose message names the key (``backends[1].url:
...``), so an operator can fix the file without reading the code.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quicgw.core.catalog import GPUS, resolve_model
from quicgw.core.classes import DEFAULT_CLASSES, ClassTable, TrafficClass


class ConfigError(ValueError):
    """The configuration file is wrong; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    priority: int = Field(ge=0, le=63)
    deadline_ms: float = Field(gt=0, le=86_400_000)
    reward_weight: float = Field(default=1.0, ge=0)
    tier: int = Field(default=0, ge=0, le=7)
    urgency: int = Field(default=3, ge=0, le=7)
    description: str = ""

    def to_traffic_class(self) -> TrafficClass:
        return TrafficClass(**self.model_dump())


class TenantConfig(_Strict):
    name: str = Field(min_length=1)
    # Give the key in the clear (development) or its SHA-256 hex digest (production).
    api_key: str | None = Field(default=None, min_length=8)
    api_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    classes: list[str] = Field(min_length=1)
    default_class: str | None = None
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    # What to do when the tenant asks for a class it may not use: refuse (403) or serve it in
    # its own default class.
    on_forbidden_class: Literal["reject", "downgrade"] = "reject"

    @model_validator(mode="after")
    def _one_key(self) -> TenantConfig:
        if (self.api_key is None) == (self.api_key_sha256 is None):
            raise ValueError("give exactly one of api_key or api_key_sha256")
        if self.default_class is not None and self.default_class not in self.classes:
            raise ValueError(f"default_class {self.default_class!r} is not in classes")
        return self

    @property
    def key_digest(self) -> str:
        if self.api_key_sha256 is not None:
            return self.api_key_sha256
        return hashlib.sha256(self.api_key.encode()).hexdigest()


class BackendConfig(_Strict):
    name: str = Field(min_length=1)
    model: str
    gpu: str = "a100-80gb"
    # An OpenAI-compatible base URL (vLLM, TGI, Ollama, llama.cpp, our emulated backend) ...
    url: str | None = None
    # ... or let `quicgw serve` start an emulated backend on this port itself.
    emulated: bool = False
    port: int | None = Field(default=None, ge=1, le=65535)
    max_batch: int | None = Field(default=None, ge=1)
    # The model name to send upstream when it differs from the catalog name (e.g. a HF id).
    served_model_name: str | None = None
    # Send vLLM's `priority` field (the class priority) upstream. vLLM refuses it unless started
    # with --scheduling-policy priority; turn it off for engines started without it.
    forward_priority: bool = True
    time_scale: float = Field(default=1.0, gt=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        try:
            return resolve_model(v).name
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPUS:
            raise ValueError(f"unknown GPU {v!r} (known: {', '.join(GPUS)})")
        return v

    @model_validator(mode="after")
    def _where(self) -> BackendConfig:
        if self.emulated and self.port is None and self.url is None:
            raise ValueError("an emulated backend needs a port")
        if not self.emulated and self.url is None:
            raise ValueError("give url, or emulated = true with a port")
        return self

    @property
    def base_url(self) -> str:
        return self.url or f"http://127.0.0.1:{self.port}"


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    certfile: str | None = None
    keyfile: str | None = None
    scheduler: str = "rr"
    router: str = "jsq"
    router_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    anonymous_class: str | None = None
    max_streams_per_connection: int = Field(default=1000, ge=1)
    health_interval_s: float = Field(default=2.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    default_max_tokens: int = Field(default=256, ge=1)
    # POST /v1/echo returns the request body (classified as usual): the network experiments.
    echo_endpoint: bool = False
    # Upper bound on waiting for a backend's next bytes before the client gets a 504 / error event.
    upstream_timeout_s: float = Field(default=60.0, gt=0)
    # Plain-HTTP listener (no TLS) for /metrics and /dashboard, e.g. for Prometheus on a private
    # network; None: none. admin_host defaults to host.
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    admin_host: str | None = None
    # Also answer /metrics and /dashboard on the public listeners (false: admin port only).
    public_ops: bool = True
    # ILP profile and plan JSON files for the dashboard's benchmark browser (searched
    # recursively); None: the example profiles shipped with ilp.
    dashboard_data_dir: str | None = None


class Config(_Strict):
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    classes: list[ClassConfig] = Field(
        default_factory=lambda: [ClassConfig(**_class_fields(c)) for c in DEFAULT_CLASSES])
    tenants: list[TenantConfig] = Field(default_factory=list)
    backends: list[BackendConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("classes: duplicate class name")
        for i, t in enumerate(self.tenants):
            for c in t.classes:
                if c not in names:
                    raise ValueError(f"tenants[{i}].classes: unknown class {c!r}")
        digests = [t.key_digest for t in self.tenants]
        if len(set(digests)) != len(digests):
            raise ValueError("tenants: two tenants share an API key")
        if self.gateway.anonymous_class is not None and self.gateway.anonymous_class not in names:
            raise ValueError(f"gateway.anonymous_class: unknown class {self.gateway.anonymous_class!r}")
        bnames = [b.name for b in self.backends]
        if len(set(bnames)) != len(bnames):
            raise ValueError("backends: duplicate backend name")
        return self

    @property
    def class_table(self) -> ClassTable:
        return ClassTable.of([c.to_traffic_class() for c in self.classes])


def _class_fields(c: TrafficClass) -> dict:
    return {k: getattr(c, k) for k in TrafficClass.__slots__}


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = _location(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{where}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
