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
    # The tightest deadline a request of this class may ask for in x-deadline-ms. Unset: the
    # class deadline itself, so a client can relax its deadline but never tighten it to jump
    # the earliest-deadline-first queues (see quicgw.gateway.classify).
    min_deadline_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _floor_below_deadline(self) -> ClassConfig:
        if self.min_deadline_ms is not None and self.min_deadline_ms > self.deadline_ms:
            raise ValueError(f"min_deadline_ms ({self.min_deadline_ms:g}) is above deadline_ms "
                             f"({self.deadline_ms:g})")
        return self

    def to_traffic_class(self) -> TrafficClass:
        return TrafficClass(**self.model_dump(exclude={"min_deadline_ms"}))


class TenantConfig(_Strict):
    name: str = Field(min_length=1)
    # Give the key in the clear (development) or its SHA-256 hex digest (production). Never
    # shown in a repr or an error message.
    api_key: str | None = Field(default=None, min_length=8, repr=False)
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
    # Answer in-process at once with a fixed completion, no upstream hop: for measuring the
    # gateway itself (python -m quicgw.bench.throughput). Needs no url.
    instant: bool = False
    # Send vLLM's `priority` field (the class priority) upstream. vLLM refuses it unless started
    # with --scheduling-policy priority; turn it off for engines started without it.
    forward_priority: bool = True
    # How many times faster than the catalog's model this backend runs (an emulated backend in
    # compressed time): the routers' latency predictions are scaled by it.
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
        if self.instant and (self.emulated or self.url is not None):
            raise ValueError("an instant backend takes neither url nor emulated")
        if not self.emulated and not self.instant and self.url is None:
            raise ValueError("give url, or emulated = true with a port, or instant = true")
        return self

    @property
    def base_url(self) -> str:
        if self.instant:
            return "instant:"
        return self.url or f"http://127.0.0.1:{self.port}"


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    certfile: str | None = None
    keyfile: str | None = None
    scheduler: str = "rr"
    # QUIC congestion controller of the gateway's side of each connection (quicgw.congestion):
    # "bbr" (model-based, tolerates random loss) or aioquic's "reno" / "cubic".
    congestion_control: str = "bbr"
    router: str = "jsq"
    router_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    anonymous_class: str | None = None
    # Rate limits shared by all anonymous users (anonymous_class, or an open gateway).
    anonymous_requests_per_minute: float | None = Field(default=None, gt=0)
    anonymous_tokens_per_minute: float | None = Field(default=None, gt=0)
    max_streams_per_connection: int = Field(default=1000, ge=1)
    health_interval_s: float = Field(default=2.0, gt=0)
    # Consecutive failed probes that mark an instance down, passed probes that bring it back.
    # A backend that refuses a connection is marked down at once, without waiting for a probe.
    health_fall: int = Field(default=2, ge=1)
    health_rise: int = Field(default=1, ge=1)
    health_timeout_s: float = Field(default=1.0, gt=0)
    # On stop: HTTP/3 GOAWAY (HTTP/2 GOAWAY on TCP), then in-flight requests get this long to
    # finish before they are ended with an explicit error and the connections closed.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # A proxied request is given up (504, or an error event in a started stream) once
    # deadline_timeout_factor times its deadline has passed since it arrived: queue time
    # included. Clients that want to wait longer relax x-deadline-ms.
    deadline_timeout_factor: float = Field(default=3.0, ge=1.0)
    # Response bytes the gateway holds for a peer that does not read (not yet sent because
    # flow control or congestion holds them), per stream and per connection; a response
    # writer waits beyond them, and a writer that could not write for write_stall_timeout_s
    # is ended (stream reset, backend request cancelled, slot freed).
    stream_buffer_bytes: int = Field(default=1 << 20, ge=16 << 10)
    connection_buffer_bytes: int = Field(default=16 << 20, ge=64 << 10)
    write_stall_timeout_s: float = Field(default=10.0, gt=0)
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

    @field_validator("congestion_control")
    @classmethod
    def _known_congestion_control(cls, v: str) -> str:
        from quicgw.congestion import check_algorithm

        return check_algorithm(v)


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
            if t.name == "anonymous":
                raise ValueError(f"tenants[{i}].name: 'anonymous' is reserved for requests "
                                 f"without a key")
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
