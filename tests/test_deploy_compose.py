"""deploy/compose.yaml checked by what it is made of (no container runtime runs here): its services,
ports, volumes, health checks and start order; every file it mounts exists; every variable it uses is
in deploy/.env.example; and the gateway config it mounts loads with those example values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from proxy.config import load_config
from tests.test_packaging import dockerfile

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GATEWAYS = ("gateway-1", "gateway-2")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def variables(path: Path) -> set[str]:
    """The ${VAR} names a file uses outside comment lines."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    return set(VAR.findall("\n".join(lines)))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def test_services_and_ports(compose):
    services = compose["services"]
    assert set(services) == {*GATEWAYS, "postgres", "redis", "prometheus", "grafana"}
    ports = {name: s.get("ports", []) for name, s in services.items()}
    assert ports["gateway-1"] == ["127.0.0.1:8081:8080"] and ports["gateway-2"] == ["127.0.0.1:8082:8080"]
    assert ports["prometheus"] == ["127.0.0.1:9090:9090"] and ports["grafana"] == ["127.0.0.1:3000:3000"]
    assert not ports["postgres"] and not ports["redis"]  # reachable only inside the stack's network
    assert ("EXPOSE", "8080") in dockerfile()  # the container port the gateways publish


def test_gateways_are_built_from_the_dockerfile_and_drain(compose):
    for name in GATEWAYS:
        s = compose["services"][name]
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == ROOT / "Dockerfile"
        assert s["stop_grace_period"] == "60s"  # 30 s uvicorn drain + ledger flush (Dockerfile: STOPSIGNAL)
        assert s["environment"]["GATEWAY_CONFIG"] == "/etc/llm-gateway/gateway.toml"
        assert "./gateway.compose.toml:/etc/llm-gateway/gateway.toml:ro" in s["volumes"]
        assert f"{name}-data:/var/lib/llm-gateway" in s["volumes"]  # the spill journal survives restarts


def test_health_checks_and_start_order(compose):
    services = compose["services"]
    for name, s in services.items():
        test = s["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    for name in GATEWAYS:
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    expected = {**{g: {"postgres", "redis"} for g in GATEWAYS}, "prometheus": set(GATEWAYS), "grafana": {"prometheus"}}
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
    assert "depends_on" not in services["postgres"] and "depends_on" not in services["redis"]


def test_every_mounted_file_exists_and_named_volumes_are_declared(compose):
    for name, s in compose["services"].items():
        for volume in s.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: {source}"


def test_prometheus_scrapes_both_replicas(compose):
    mount = next(v for v in compose["services"]["prometheus"]["volumes"] if v.endswith("prometheus.yml:ro"))
    prom = yaml.safe_load((DEPLOY / mount.split(":")[0]).read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == [f"{g}:8080" for g in GATEWAYS]
    assert all(job["metrics_path"] == "/metrics" for job in prom["scrape_configs"])


def test_grafana_provisions_the_datasource_and_the_dashboard(compose):
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"], d["isDefault"]) for d in sources] == [("prometheus", "http://prometheus:9090", True)]
    providers = yaml.safe_load((provisioning / "dashboards" / "llm-gateway.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/gateway-dashboard.json:{path}/gateway-dashboard.json:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_every_variable_is_in_env_example(compose, env_example):
    used = variables(DEPLOY / "compose.yaml") | variables(DEPLOY / "gateway.compose.toml")
    assert used and used <= set(env_example), used - set(env_example)
    for name in ("GATEWAY_ADMIN_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "GATEWAY_DEMO_KEY"):
        assert "change-me" in env_example[name], name  # placeholders, never a real secret
    # every variable the gateway config reads reaches the gateway containers
    for name in GATEWAYS:
        env = compose["services"][name]["environment"]
        assert variables(DEPLOY / "gateway.compose.toml") <= set(env)


def test_env_file_is_not_committed():
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_gateway_config_loads_with_the_example_values(env_example):
    config = load_config(DEPLOY / "gateway.compose.toml", env=env_example)
    assert config.storage.database_url.startswith("postgresql://gateway:change-me-postgres-password@postgres:5432/")
    assert config.storage.redis_url == "redis://redis:6379/0"
    assert config.server.host == "0.0.0.0" and config.server.port == 8080
    assert config.server.admin_key == env_example["GATEWAY_ADMIN_KEY"] and config.server.require_auth
    assert {k.name for k in config.keys} == {"demo"} and "echo" in config.models
