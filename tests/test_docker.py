"""docker/ without a Docker engine: every quicgw command and flag the images and the compose
file use exists in our CLI (checked against ``--help``), the gateway configs they ship load and
point at the compose services, the compose file is valid YAML with the expected services, the
images run as a non-root user, and the slim images' requirements cover what serving imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from quicgw.config import load_config, parse_config
from quicgw.core.catalog import GPUS, resolve_model

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
QUICGW_SERVICES = {"gateway": "serve", "backend-small": "backend", "backend-medium": "backend",
                   "backend-large": "backend", "gateway-vllm": "serve"}


@cache
def cli_help(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "quicgw.cli", *args, "--help"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, f"quicgw {' '.join(args)} --help failed:\n{r.stderr}"
    return r.stdout


def subcommands() -> set[str]:
    block = cli_help().split("positional arguments:")[1].split("options:")[0]
    return set(re.findall(r"^    (\w+)\s", block, re.M))


def options(subcommand: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", cli_help(subcommand)))


def check_invocation(subcommand: str, args: list[str], where: str) -> None:
    assert subcommand in subcommands(), f"{where}: 'quicgw {subcommand}' is not a subcommand"
    known = options(subcommand)
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert flag in known, f"{where}: quicgw {subcommand} has no option {flag}"


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """stage name -> [(instruction, argument)], with continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arg = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arg.strip(), re.I)
            current = m.group(2) or m.group(1)
            stages[current] = [("FROM", m.group(1))]
        elif current is not None:
            stages[current].append((instruction, arg.strip()))
    return stages


def resolved(stage: str, stages: dict) -> list[tuple[str, str]]:
    """A stage's instructions after those of the stages it is built FROM."""
    own = stages[stage]
    parent = own[0][1]
    return (resolved(parent, stages) if parent in stages else [own[0]]) + own[1:]


def last(instructions: list[tuple[str, str]], name: str) -> str | None:
    found = [arg for ins, arg in instructions if ins == name]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_targets_are_slim_non_root_and_use_real_cli_flags():
    stages = dockerfile_stages()
    assert {"build", "runtime", "gateway", "backend"} <= set(stages)
    assert all(s[0][1].startswith(("python:", "runtime", "build")) for s in stages.values())
    assert stages["build"][0][1].endswith("-slim") and stages["runtime"][0][1].endswith("-slim")
    for target, subcommand in (("gateway", "serve"), ("backend", "backend")):
        ins = resolved(target, stages)
        user = last(ins, "USER")
        assert user not in (None, "root", "0"), f"{target} image runs as root"
        # USER comes before the entrypoint: the process never runs as root
        names = [i for i, _ in ins]
        assert names.index("USER") < names.index("ENTRYPOINT")
        entrypoint = json.loads(last(ins, "ENTRYPOINT"))
        cmd = json.loads(last(ins, "CMD"))
        assert entrypoint == ["quicgw", subcommand]
        check_invocation(subcommand, cmd, f"Dockerfile target {target} CMD")
        health = last(ins, "HEALTHCHECK")
        assert health and "CMD" in health
    gateway_ports = " ".join(arg for i, arg in resolved("gateway", stages) if i == "EXPOSE")
    assert {"8443/tcp", "8443/udp", "9090/tcp"} <= set(gateway_ports.split())
    # the gateway image carries the config its CMD names
    copied = [arg for i, arg in stages["gateway"] if i == "COPY"]
    assert "docker/gateway.toml /etc/quicgw/gateway.toml" in copied
    assert "/etc/quicgw/gateway.toml" in json.loads(last(stages["gateway"], "CMD"))


def test_compose_file_services_commands_and_ports(compose):
    services = compose["services"]
    assert {"gateway", "backend-small", "backend-medium", "backend-large"} <= set(services)
    stages = dockerfile_stages()
    for name, subcommand in QUICGW_SERVICES.items():
        svc = services[name]
        target = svc["build"]["target"]
        assert target in stages and svc["build"]["dockerfile"] == "docker/Dockerfile"
        entrypoint = json.loads(last(resolved(target, stages), "ENTRYPOINT"))
        assert entrypoint == ["quicgw", subcommand]
        check_invocation(subcommand, svc["command"], f"compose service {name}")
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    for name in ("backend-small", "backend-medium", "backend-large"):
        cmd = services[name]["command"]
        resolve_model(cmd[cmd.index("--model") + 1])
        assert cmd[cmd.index("--gpu") + 1] in GPUS
        assert cmd[cmd.index("--port") + 1] == "8000"
    ports = services["gateway"]["ports"]
    assert {"8443:8443/udp", "8443:8443/tcp", "9090:9090/tcp"} <= {p.split()[0] for p in ports}
    # the emulated setup starts by default; the vLLM services only with --profile vllm
    for name in ("gateway", "backend-small", "backend-medium", "backend-large"):
        assert "profiles" not in services[name]


def test_vllm_profile_reserves_gpus_and_enables_priority_scheduling(compose):
    services = compose["services"]
    engines = [n for n, s in services.items() if s.get("image", "").startswith("vllm/")]
    assert len(engines) >= 2
    for name in engines:
        svc = services[name]
        assert svc["profiles"] == ["vllm"]
        cmd = svc["command"]
        assert cmd[cmd.index("--scheduling-policy") + 1] == "priority"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["gateway-vllm"]["profiles"] == ["vllm"]
    config = load_config(DOCKER / "gateway-vllm.toml")
    for b in config.backends:
        host = urlsplit(b.url).hostname
        assert host in engines, f"gateway-vllm.toml backend {b.name} points at {host}"
        assert b.forward_priority  # the engines accept vLLM's priority field
        engine_cmd = services[host]["command"]
        assert engine_cmd[engine_cmd.index("--model") + 1] == b.served_model_name
        assert b.max_batch == int(engine_cmd[engine_cmd.index("--max-num-seqs") + 1])
    mounts = services["gateway-vllm"]["volumes"]
    assert "./gateway-vllm.toml:/etc/quicgw/gateway-vllm.toml:ro" in mounts


def test_gateway_config_points_at_the_compose_backends(compose):
    services = compose["services"]
    config = load_config(DOCKER / "gateway.toml")
    gw = config.gateway
    assert gw.host == "0.0.0.0" and gw.port == 8443 and gw.admin_port == 9090
    assert gw.admin_host == "0.0.0.0"
    assert gw.dashboard_data_dir == "/data/benchmarks"
    assert any(v.endswith(":/data/benchmarks:ro") for v in services["gateway"]["volumes"])
    for b in config.backends:
        url = urlsplit(b.url)
        svc = services.get(url.hostname)
        assert svc is not None, f"backend {b.name} points at {url.hostname}, not a service"
        cmd = svc["command"]
        assert str(url.port) == cmd[cmd.index("--port") + 1]
        assert resolve_model(cmd[cmd.index("--model") + 1]).name == b.model
        assert cmd[cmd.index("--gpu") + 1] == b.gpu
        assert url.hostname in services["gateway"]["depends_on"]


# The training stack the images leave out; probes make it unimportable (a meta-path blocker
# stands in for its absence), so an optional import of it does not count as a need and a hard
# one fails.
_TRAINING_STACK = ("gymnasium", "torch", "stable_baselines3", "sb3_contrib", "matplotlib",
                   "tensorboard")
_BLOCK_TRAINING_STACK = (
    "import sys\n"
    f"BLOCKED = {_TRAINING_STACK!r}\n"
    "class Blocker:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in BLOCKED:\n"
    "            raise ImportError(f'{name} is not installed in the image')\n"
    "sys.meta_path.insert(0, Blocker())\n")


def _probe_without_training_stack(code: str) -> object:
    """Run ``code`` in a fresh interpreter with the training stack blocked; the JSON it prints."""
    r = subprocess.run([sys.executable, "-c", _BLOCK_TRAINING_STACK + code],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_image_requirements_cover_what_serving_imports():
    """The images install docker/requirements.txt and quicgw with --no-deps: every project
    dependency that `quicgw serve`, `quicgw backend` and the dashboard import must be listed."""
    imported = set(_probe_without_training_stack(
        "import json\n"
        "import quicgw.cli; quicgw.cli.build_parser()\n"
        "import quicgw.gateway.server, quicgw.gateway.cli, quicgw.backends.cli\n"
        "import quicgw.backends.emulated, quicgw.dashboard.routes, quicgw.dashboard.admin\n"
        "import ilp.profile, ilp.plan\n"
        "from quicgw.runtime import event_loop_factory; event_loop_factory()\n"
        "from quicgw.core.routing import create_router\n"
        "create_router('dqn'); create_router('slackfit:0.35/0.35/0.8', reserve=0.625)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"))

    def name(req: str) -> str:
        return re.split(r"[\[<>=!;\s]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")

    def import_names(dist_name: str) -> set[str]:
        dist = distribution(dist_name)
        top_level = dist.read_text("top_level.txt")
        if top_level:
            return set(top_level.split())
        return {f.parts[0].removesuffix(".py") for f in dist.files or ()
                if not f.parts[0].endswith((".dist-info", ".data"))}

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {name(d) for d in project if import_names(name(d)) & imported}
    listed = {name(line) for line in (DOCKER / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert needed <= listed, f"docker/requirements.txt lacks {sorted(needed - listed)}"
    assert "torch" not in listed  # the point of the slim image


def test_learned_and_slackfit_routers_serve_without_the_training_stack():
    """The images leave the training stack out: the gateway's `dqn` and `slackfit` routers must
    load and route with gymnasium, torch and SB3 unimportable."""
    picks, modules = _probe_without_training_stack(
        "import json\n"
        "from quicgw.core.routing import ClusterView, InstanceLoad, RouteRequest, create_router\n"
        "from rlrouter.cluster import build_instances, cluster_specs\n"
        "instances = build_instances(cluster_specs('poster'))\n"
        "loads = [InstanceLoad(in_flight=k, queued=0) for k in (30, 2, 5, 0)]\n"
        "view = ClusterView(instances, loads, 0.0, {'realtime': (1.0, 1.0, 1.0), "
        "'free': (2.0, 2.0, 2.0), 'bulk': (0.5, 0.5, 0.5)})\n"
        "req = RouteRequest('realtime', 0, 0, 1.8, 1.8, 200, 48, 'general', 2.0)\n"
        "picks = {spec: create_router(spec).route(req, view)\n"
        "         for spec in ('dqn', 'slackfit:0.35/0.35/0.8')}\n"
        "print(json.dumps([picks, sorted({m.split('.')[0] for m in sys.modules})]))\n")
    assert all(0 <= i < 4 for i in picks.values()), picks
    assert not set(_TRAINING_STACK) & set(modules)


def test_readme_says_how_to_run_it():
    text = (REPO / "README.md").read_text()
    assert "docker compose -f docker/compose.yaml up --build" in text
    assert "--profile vllm" in text
    # the example config stays valid for whoever copies it
    parse_config(tomllib.loads((DOCKER / "gateway.toml").read_text()))
