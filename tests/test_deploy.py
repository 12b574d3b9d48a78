"""The deployment files agree with each other and with the hub: there is no Docker engine here,
so the compose file, the Dockerfile, the nginx and Prometheus configs are read and
cross-checked (services, ports, the env the hub reads, health checks), and the Procfile's
command is run as a platform would run it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import yaml

from hub.config import Settings
from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
HUB_PORT = 8000
"""The port the image's hub listens on (Dockerfile `HUB_PORT`)."""


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def hub_services() -> dict[str, dict[str, Any]]:
    """The services that run the hub image: built from this repository's Dockerfile."""
    return {name: svc for name, svc in compose()["services"].items() if svc.get("build") == "."}


def upstream_servers(nginx_conf: str) -> list[str]:
    [block] = re.findall(r"upstream\s+fitsync_hub\s*\{([^}]*)\}", nginx_conf)
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block, re.MULTILINE)


def nginx_conf() -> str:
    return (DEPLOY / "nginx" / "fitsync.conf").read_text()


def test_compose_runs_two_or_more_hub_nodes_behind_nginx_with_redis_postgres_and_monitoring(
) -> None:
    services = compose()["services"]
    hubs = hub_services()
    assert len(hubs) >= 2
    assert {"lb", "redis", "postgres", "prometheus", "grafana"} <= services.keys()
    assert services["lb"]["image"].startswith("nginx:")
    for name, svc in hubs.items():
        assert "ports" not in svc, f"{name} is reached through the load balancer only"
        assert str(HUB_PORT) in [str(p) for p in svc["expose"]]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert set(services["lb"]["depends_on"]) == set(hubs)


def test_every_service_has_a_health_check_and_the_hubs_probe_healthz() -> None:
    for name, svc in compose()["services"].items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name, svc in hub_services().items():
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{HUB_PORT}/healthz" in probe, name


def test_every_hub_variable_in_compose_is_a_setting_the_hub_reads() -> None:
    known = {f"HUB_{f.name.upper()}" for f in fields(Settings) if f.name != "dev_mode"}
    readme = (ROOT / "README.md").read_text()
    for name, svc in hub_services().items():
        env = svc["environment"]
        hub_vars = {key for key in env if key.startswith("HUB_")}
        assert hub_vars <= known, f"{name}: {sorted(hub_vars - known)} are not Settings fields"
        assert env["HUB_DATABASE_URL"].startswith("postgresql://")
        assert env["HUB_DATABASE_URL"].split("@")[1].startswith("postgres:5432/")
        assert env["HUB_REDIS_URL"].startswith("redis://redis:6379")
        for key in env:
            assert key in readme, f"{key} is not documented in README.md"
    postgres = compose()["services"]["postgres"]["environment"]
    url = next(iter(hub_services().values()))["environment"]["HUB_DATABASE_URL"]
    assert url == (f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                   f"@postgres:5432/{postgres['POSTGRES_DB']}")


def test_a_rolling_restart_lets_the_drain_finish_before_docker_kills() -> None:
    for name, svc in hub_services().items():
        grace = int(svc["stop_grace_period"].removesuffix("s"))
        settings = Settings.from_env({k: str(v) for k, v in svc["environment"].items()
                                      if k.startswith("HUB_") and "${" not in str(v)})
        assert settings.shutdown_timeout < grace, name


def test_the_load_balancer_sends_to_exactly_the_hub_services_and_upgrades_websockets() -> None:
    conf = nginx_conf()
    assert sorted(upstream_servers(conf)) == sorted(f"{name}:{HUB_PORT}" for name in hub_services())
    [listen] = re.findall(r"^\s*listen\s+(\d+);", conf, re.MULTILINE)
    lb = compose()["services"]["lb"]
    assert any(str(p).endswith(f":{listen}") for p in lb["ports"])
    assert "./deploy/nginx/fitsync.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    websocket = re.search(r"location = /connection/websocket \{([^}]*)\}", conf)
    assert websocket is not None
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket.group(1)
    assert "proxy_set_header Connection $connection_upgrade;" in websocket.group(1)
    assert "http_503" in conf  # a draining node's refusal goes to the next node


def test_prometheus_scrapes_every_hub_node_and_loads_the_alert_rules() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "fitsync-hub"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert sorted(targets) == sorted(f"{name}:{HUB_PORT}" for name in hub_services())
    volumes = compose()["services"]["prometheus"]["volumes"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.startswith("./")}
    assert mounted["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"
    for rule_file in prometheus["rule_files"]:
        alerts = yaml.safe_load((ROOT / mounted[rule_file]).read_text())
        assert all(rule["expr"] and rule["alert"] for group in alerts["groups"]
                   for rule in group["rules"])


def test_every_file_compose_mounts_and_the_dockerfile_copies_is_in_the_repository() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    grafana = DEPLOY / "grafana"
    assert (grafana / "provisioning" / "datasources" / "prometheus.yml").exists()
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "fitsync.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    for line in dockerfile_instructions("COPY"):
        if "--from=" in line:
            continue
        for source in line.split()[1:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def dockerfile_instructions(keyword: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(keyword + " ")]


def test_the_image_is_slim_runs_as_a_non_root_user_and_checks_healthz() -> None:
    stages = dockerfile_instructions("FROM")
    assert stages[-1].split()[1].endswith("-slim")
    [user] = dockerfile_instructions("USER")
    assert user.split()[1] not in ("root", "0")
    [healthcheck] = dockerfile_instructions("HEALTHCHECK")
    assert "/healthz" in healthcheck
    env = " ".join(dockerfile_instructions("ENV"))
    assert f"HUB_PORT={HUB_PORT}" in env and "HUB_HOST=0.0.0.0" in env
    assert dockerfile_instructions("CMD")[-1] == 'CMD ["fitsync-hub", "serve"]'


async def test_the_procfile_web_process_listens_on_the_port_the_platform_gives(
    tmp_path: Path,
) -> None:
    [web] = [line for line in (ROOT / "Procfile").read_text().splitlines()
             if line.startswith("web:")]
    command = web.removeprefix("web:").strip()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update({"PORT": str(port), "HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}",
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    # As a platform runs it: through a shell (`exec`, so the PID is the hub's own).
    process = subprocess.Popen(f"exec {command}", shell=True, env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        for _ in range(300):
            if await healthy():
                break
            assert process.poll() is None, "the Procfile's web process exited"
            await asyncio.sleep(0.1)
        assert await healthy()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
