"""The deployment files agree with the code, and the local proxy balances and fails over.

No Docker engine or Kubernetes cluster runs here, so the images are not built and the
compose file and the manifests are not applied.  What can be proved without them is:

* every YAML file under ``infra/`` parses, and the dashboard is valid JSON;
* every environment variable a Dockerfile, the compose file or a manifest sets is one the
  service it is set for actually reads (the ``env_*("NAME", ...)`` / ``contract_path``
  calls in its ``config.py``, plus ``TETHER_LOG_LEVEL`` / ``TETHER_LOG_FILE`` in
  tether-kit), and every variable a service requires is set;
* every probe / health-check path is a path of that service's contract;
* the shutdown budgets cover Tether's drain (F15);
* every metric name the Grafana dashboard queries is exposed by the real services'
  ``/metrics`` (F41: both services are started and scraped);
* the local proxy (``infra/tether_dev/proxy.py``, used by ``./dev up --replicas N``)
  balances WebSockets and HTTP over two real session replicas, passes the 4502 drain close
  through, stops routing to a replica once it is SIGTERMed, and never routes to one that
  is not ready (F15).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from trio_websocket import open_websocket_url

from tests.support.auth import AuthServiceFactory
from tests.support.contract import REPO_ROOT, sync_client
from tests.support.fixtures import SpawnService
from tests.support.pg import PgServer
from tests.support.procs import ServiceProcess
from tests.support.session import (
    ALLOWED_ORIGIN,
    SessionReplica,
    Stack,
    StackFactory,
    WsClient,
    close_catalogue,
)
from tests.support.waiting import await_until, scaled
from tether_dev import up
from tether_dev.pg import free_port
from tether_dev.proxy import RequestHead

INFRA = REPO_ROOT / "infra"
DOCKER = INFRA / "docker"
COMPOSE = INFRA / "compose" / "compose.yaml"
CADDYFILE = INFRA / "compose" / "Caddyfile"
K8S = INFRA / "k8s"
DASHBOARD = INFRA / "grafana" / "tether-dashboard.json"

AUTH, SESSION = "auth-token", "session"
CONFIG_FILES = {
    AUTH: REPO_ROOT / "services" / "auth-token" / "src" / "tether_auth" / "config.py",
    SESSION: REPO_ROOT / "services" / "session" / "src" / "tether_session" / "config.py",
}
LOGS_PY = REPO_ROOT / "libs" / "tether-kit" / "src" / "tether_kit" / "logs.py"
CONTRACTS = {
    AUTH: REPO_ROOT / "contracts" / "auth-token" / "openapi.json",
    SESSION: REPO_ROOT / "contracts" / "session" / "openapi.json",
}
MODULES = {AUTH: "tether_auth", SESSION: "tether_session"}
# Variables an image may set that are for Python / pip, not for Tether.
RUNTIME_VARS = frozenset(
    {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
)
# Hypercorn's graceful stop of the auth-token service (tether_kit.serve.run's default).
AUTH_GRACEFUL_S = 10.0
PROXY_MODULE = "tether_dev.proxy"


# -- what the code reads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvSpec:
    """The environment variables one service reads, those it requires, and their defaults."""

    read: frozenset[str]
    required: frozenset[str]
    defaults: dict[str, str] = field(default_factory=dict)


def env_spec(service: str) -> EnvSpec:
    text = CONFIG_FILES[service].read_text()
    read = set(re.findall(r"\b(?:env_[a-z]+|contract_path)\(\s*\"([A-Z][A-Z0-9_]*)\"", text))
    read |= set(re.findall(r"os\.environ\.get\(\s*\"([A-Z][A-Z0-9_]*)\"", LOGS_PY.read_text()))
    required = set(re.findall(r"\benv_str\(\s*\"([A-Z][A-Z0-9_]*)\"\s*\)", text))
    defaults = dict(re.findall(r"\benv_(?:int|float)\(\s*\"([A-Z][A-Z0-9_]*)\",\s*([0-9.]+)\s*\)", text))
    assert {"DATABASE_URL", "TETHER_LOG_LEVEL", "TETHER_LOG_FILE"} <= read, f"parsing {CONFIG_FILES[service]} failed"
    return EnvSpec(frozenset(read), frozenset(required), defaults)


def contract_paths(service: str) -> set[str]:
    return set(json.loads(CONTRACTS[service].read_text())["paths"])


def drain_timeout_s(env: dict[str, str]) -> float:
    return float(env.get("TETHER_DRAIN_TIMEOUT_S") or env_spec(SESSION).defaults["TETHER_DRAIN_TIMEOUT_S"])


def duration_s(value: str | int | float) -> float:
    """A compose duration ("30s", "1m30s") or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", value)
    assert "".join(n + u for n, u in parts) == value, f"unparsable duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def url_paths(text: str) -> set[str]:
    """Paths of the http://host:port/... URLs in a health-check command."""
    return set(re.findall(r"https?://[^/\s'\"]+(/[A-Za-z0-9_./-]*)", text))


# -- Dockerfiles -----------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    path: Path
    stages: list[list[tuple[str, str]]]  # per FROM: (INSTRUCTION, arguments)

    @classmethod
    def load(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical.append(pending + line)
            pending = ""
        assert not pending, f"{path}: dangling line continuation"
        stages: list[list[tuple[str, str]]] = []
        for line in logical:
            instruction, _, args = line.partition(" ")
            instruction = instruction.upper()
            if instruction == "FROM":
                stages.append([])
            elif not stages:
                assert instruction == "ARG", f"{path}: {instruction} before the first FROM"
                continue
            stages[-1].append((instruction, args.strip()))
        return cls(path, stages)

    def all(self, instruction: str, stage: int | None = None) -> list[str]:
        chosen = self.stages if stage is None else [self.stages[stage]]
        return [args for s in chosen for inst, args in s if inst == instruction]

    def env(self, stage: int = -1) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV", stage):
            for item in shlex.split(args):
                name, sep, value = item.partition("=")
                assert sep, f"{self.path}: use ENV NAME=value, got {item!r}"
                env[name] = value
        return env


def dockerfile(service: str) -> Dockerfile:
    return Dockerfile.load(DOCKER / f"{service}.Dockerfile")


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def docker_ignored(relative: str, ignore_file: Path) -> bool:
    """Whether BuildKit leaves ``relative`` out of the context (last matching rule wins;
    a rule that matches a parent directory matches everything below it)."""
    rules = []
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _ignore_regex(line.lstrip("!").strip("/"))))
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


# -- compose and Kubernetes -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_kind(svc: dict[str, Any]) -> str | None:
    """auth-token / session for the services built from Tether's Dockerfiles."""
    build = svc.get("build")
    if not isinstance(build, dict):
        return None
    name = Path(build["dockerfile"]).name
    return {"auth-token.Dockerfile": AUTH, "session.Dockerfile": SESSION}.get(name)


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") != "Kustomization")
    return docs


def k8s(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def deployment_service(deploy: dict[str, Any]) -> str:
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    for service in (AUTH, SESSION):
        if f"/{service}:" in image:
            return service
    raise AssertionError(f"cannot tell which service {deploy['metadata']['name']} runs ({image})")


def container_env(deploy: dict[str, Any]) -> dict[str, str]:
    """Names (and literal values, "" for references) of every variable a Deployment sets."""
    configmaps = k8s("ConfigMap")
    secrets = k8s("Secret")
    env: dict[str, str] = {}
    for container in deploy["spec"]["template"]["spec"]["containers"]:
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            assert ref, source
            store = configmaps if "configMapRef" in source else secrets
            assert ref["name"] in store, f"{deploy['metadata']['name']} uses missing {ref['name']}"
            data = store[ref["name"]].get("data") or store[ref["name"]].get("stringData") or {}
            env.update({k: str(v) for k, v in data.items()})
        for item in container.get("env", []):
            value_from = item.get("valueFrom", {})
            if "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                assert ref["name"] in secrets, f"missing Secret {ref['name']}"
                assert ref["key"] in secrets[ref["name"]]["stringData"], f"Secret {ref['name']} has no {ref['key']}"
                env[item["name"]] = str(secrets[ref["name"]]["stringData"][ref["key"]])
            else:
                env[item["name"]] = str(item.get("value", ""))
    return env


def pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s("Deployment")[name]["spec"]["template"]["spec"]
    return spec


def prestop_sleep_s(container: dict[str, Any]) -> float:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


# == static checks =================================================================================


def test_every_yaml_file_under_infra_parses_and_the_dashboard_is_json() -> None:
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert COMPOSE in files, files
    assert len(files) >= 7, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), path
    for doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "tether", doc["metadata"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}, listed
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    assert all(p["targets"] and all(t["expr"].strip() for t in p["targets"]) for p in dashboard["panels"])


@pytest.mark.parametrize("service", [AUTH, SESSION])
def test_dockerfile_is_multistage_nonroot_with_healthcheck_stopsignal_and_exec_cmd(service: str) -> None:
    df = dockerfile(service)
    assert len(df.stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for base in df.all("FROM"):
        image = base.split()[0]
        assert image in ("${PYTHON_IMAGE}", "python:3.11-slim"), base
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", df.path.read_text(), re.M)
    runtime = len(df.stages) - 1
    users = df.all("USER", runtime)
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    assert df.all("STOPSIGNAL", runtime) == ["SIGTERM"]
    healthchecks = df.all("HEALTHCHECK", runtime)
    assert len(healthchecks) == 1, healthchecks
    assert " CMD " in f" {healthchecks[0]} ", healthchecks
    assert url_paths(healthchecks[0]), healthchecks
    assert url_paths(healthchecks[0]) <= contract_paths(service), healthchecks
    cmd = json.loads(df.all("CMD", runtime)[-1])  # exec form is a JSON array
    assert cmd == ["python", "-m", MODULES[service]], cmd
    # The runtime stage points the installed package at its contract (and web root).
    env = df.env(runtime)
    contract_var = "TETHER_AUTH_CONTRACT" if service == AUTH else "TETHER_SESSION_CONTRACT"
    copied = [args.split() for args in df.all("COPY", runtime) if not args.startswith("--from")]
    destinations = {dst.rstrip("/"): src for src, dst in copied}
    assert Path(env[contract_var]).parent.as_posix() in destinations, (env[contract_var], destinations)
    assert destinations[Path(env[contract_var]).parent.as_posix()].rstrip("/") == f"contracts/{service}"
    if service == SESSION:
        assert destinations[env["TETHER_WEB_ROOT"]].rstrip("/") == "clients/js"


@pytest.mark.parametrize("service", [AUTH, SESSION])
def test_dockerfile_copies_exist_and_survive_its_dockerignore(service: str) -> None:
    df = dockerfile(service)
    ignore = DOCKER / f"{service}.Dockerfile.dockerignore"
    assert ignore.is_file(), "BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile"
    sources = [args.split()[0] for args in df.all("COPY") if not args.startswith("--from")]
    assert sources, "nothing copied from the context"
    for src in sources:
        path = REPO_ROOT / src
        assert path.exists(), f"COPY {src}: no such path in the repository"
        assert not docker_ignored(src, ignore), f"COPY {src} is excluded by {ignore.name}"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        kept = [p for p in files if not docker_ignored(p.relative_to(REPO_ROOT).as_posix(), ignore)]
        assert kept, f"COPY {src}: every file is excluded by {ignore.name}"
    for must in ("libs/tether-kit/pyproject.toml", f"contracts/{service}/openapi.json"):
        assert not docker_ignored(must, ignore), must
    for never in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "artifacts/x.log",
        "libs/tether-kit/src/x/__pycache__/a.pyc",
    ):
        assert docker_ignored(never, ignore), f"{never} would be sent to the builder"
    if service == SESSION:
        assert not docker_ignored("clients/js/tether.js", ignore)
        assert docker_ignored("clients/js/test/lifecycle.test.mjs", ignore)


def test_every_env_var_set_for_a_service_is_one_it_reads_and_required_ones_are_set() -> None:
    specs = {s: env_spec(s) for s in (AUTH, SESSION)}
    checked: dict[str, int] = {}

    def check(where: str, service: str, names: set[str], *, complete: bool) -> None:
        unknown = {n for n in names if n not in specs[service].read and n not in RUNTIME_VARS}
        assert not unknown, f"{where} sets {sorted(unknown)}, which {service} never reads"
        if complete:
            missing = specs[service].required - names
            assert not missing, f"{where} does not set {sorted(missing)}, which {service} requires"
        checked[where] = len(names)

    images = {s: dockerfile(s) for s in (AUTH, SESSION)}
    for service, df in images.items():
        for stage in range(len(df.stages)):
            check(f"{df.path.name} stage {stage}", service, set(df.env(stage)), complete=False)
    kinds: dict[str, list[str]] = {AUTH: [], SESSION: []}
    for name, svc in compose()["services"].items():
        kind = compose_kind(svc)
        if kind is None:
            continue
        kinds[kind].append(name)
        names = set(compose_env(svc)) | set(images[kind].env())
        check(f"compose service {name}", kind, names, complete=True)
    assert len(kinds[AUTH]) == 2, kinds
    assert len(kinds[SESSION]) == 3, kinds
    for name, deploy in k8s("Deployment").items():
        service = deployment_service(deploy)
        names = set(container_env(deploy)) | set(images[service].env())
        check(f"Deployment {name}", service, names, complete=True)
    # Each ConfigMap is for one service and holds only what that service reads.
    for name, cm in k8s("ConfigMap").items():
        service = cm["metadata"]["labels"]["app.kubernetes.io/name"]
        check(f"ConfigMap {name}", service, set(cm["data"]), complete=False)
    assert len(checked) >= 2 + 5 + 2 + 2, checked


def test_the_service_key_pairs_up_in_compose_and_in_the_example_secret() -> None:
    """auth-token knows the session service as ``session=<key>``; the session sends ``<key>``."""
    services = compose()["services"]
    auth_keys = {compose_env(s)["TETHER_SERVICE_KEYS"] for s in services.values() if compose_kind(s) == AUTH}
    session_keys = {compose_env(s)["TETHER_AUTH_SERVICE_KEY"] for s in services.values() if compose_kind(s) == SESSION}
    assert len(auth_keys) == 1, auth_keys
    assert len(session_keys) == 1, session_keys
    assert auth_keys == {f"session={next(iter(session_keys))}"}
    secret = k8s("Secret")["tether-secrets"]["stringData"]
    assert secret["TETHER_SERVICE_KEYS"] == f"session={secret['TETHER_AUTH_SERVICE_KEY']}"
    for value in secret.values():
        assert "FAKE" in value or "fake" in value, "the example Secret must hold clearly fake values"


def test_probe_and_health_check_paths_exist_in_the_contracts() -> None:
    seen: list[tuple[str, str]] = []
    for name, deploy in k8s("Deployment").items():
        service = deployment_service(deploy)
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        port_names = {p["name"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = container[probe]["httpGet"]
            assert http["path"] in contract_paths(service), f"{name} {probe} {http['path']}"
            assert http["port"] in port_names, f"{name} {probe} port {http['port']}"
            seen.append((service, http["path"]))
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name, svc in compose()["services"].items():
        test = " ".join(svc["healthcheck"]["test"]) if isinstance(svc["healthcheck"]["test"], list) else ""
        if name == "postgres":
            assert "pg_isready" in test
            continue
        service = compose_kind(svc) or SESSION  # the proxy's check goes through to a session replica
        paths = url_paths(test)
        assert paths, f"compose {name}: no URL in its health check"
        assert paths <= contract_paths(service), f"compose {name}: {paths}"
        seen.extend((service, p) for p in paths)
    caddy = CADDYFILE.read_text()
    for site, service in ((":8080", SESSION), (":8001", AUTH)):
        block = caddy.split(f"\n{site} {{", 1)[1].split("\n}", 1)[0]
        uris = re.findall(r"health_uri\s+(\S+)", block)
        assert uris == ["/readyz"], (site, uris)
        assert "/readyz" in contract_paths(service)
    assert {(AUTH, "/readyz"), (SESSION, "/readyz"), (AUTH, "/healthz"), (SESSION, "/healthz")} <= set(seen)


def test_F15_shutdown_budgets_cover_prestop_and_the_drain() -> None:
    """Kubernetes: the grace period counts from preStop; after it the kubelet SIGKILLs.  The
    session process needs up to TETHER_DRAIN_TIMEOUT_S for its drain and as long again for
    Hypercorn's graceful stop (graceful_timeout = drain timeout)."""
    for name, deploy in k8s("Deployment").items():
        service = deployment_service(deploy)
        spec = deploy["spec"]["template"]["spec"]
        container = spec["containers"][0]
        pre = prestop_sleep_s(container)
        assert pre >= 5, f"{name}: preStop must give the load balancer time to drop the pod"
        env = container_env(deploy)
        needed = pre + (2 * drain_timeout_s(env) if service == SESSION else AUTH_GRACEFUL_S)
        assert spec["terminationGracePeriodSeconds"] > needed, (name, spec["terminationGracePeriodSeconds"], needed)
        if service == SESSION:
            assert spec["terminationGracePeriodSeconds"] > drain_timeout_s(env)
            # Leaves the Service's endpoints at the first 503 of a drain.
            assert container["readinessProbe"]["failureThreshold"] == 1
    for name, svc in compose()["services"].items():
        kind = compose_kind(svc)
        if kind == SESSION:
            grace = duration_s(svc["stop_grace_period"])
            assert grace > 2 * drain_timeout_s(compose_env(svc)), (name, grace)
        elif kind == AUTH:
            assert duration_s(svc["stop_grace_period"]) > AUTH_GRACEFUL_S, name


def test_compose_runs_two_auth_three_session_replicas_behind_a_websocket_friendly_proxy() -> None:
    services = compose()["services"]
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    replicas = {name: compose_kind(svc) for name, svc in services.items() if compose_kind(svc)}
    for name, kind in replicas.items():
        svc = services[name]
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
            DOCKER / f"{kind}.Dockerfile"
        ), name
        # All replicas start together: they wait for Postgres only, never for each other
        # (migrations run under an advisory lock; a session replica waits for auth itself).
        assert set(svc["depends_on"]) == {"postgres"}, (name, svc["depends_on"])
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in svc, name
    replica_names = [compose_env(services[n]).get("TETHER_REPLICA") for n, k in replicas.items() if k == SESSION]
    assert None not in replica_names, replica_names
    assert len(set(replica_names)) == 3, replica_names
    proxy = services["proxy"]
    assert str(proxy["image"]).startswith(("caddy:", "nginx:"))
    mounted = [v.split(":")[0] for v in proxy["volumes"]]
    assert all((COMPOSE.parent / m).is_file() for m in mounted), mounted
    assert set(proxy["depends_on"]) == set(replicas), proxy["depends_on"]
    caddy = CADDYFILE.read_text()
    for site, kind, port in ((":8080", SESSION, 8002), (":8001", AUTH, 8001)):
        block = caddy.split(f"\n{site} {{", 1)[1].split("\n}", 1)[0]
        upstreams = re.search(r"reverse_proxy\s+([^{]+)\{", block)
        assert upstreams, site
        expected = {f"{n}:{port}" for n, k in replicas.items() if k == kind}
        assert set(upstreams.group(1).split()) == expected, (site, upstreams.group(1))
        assert "lb_policy round_robin" in block
        # No timeout that would cut a long-lived WebSocket, no stickiness.
        for forbidden in ("stream_timeout", "cookie", "ip_hash"):
            assert forbidden not in block, (site, forbidden)
    assert not re.search(r"^\s*write\s", caddy, re.M), "a server write timeout would cut WebSockets"


def test_k8s_objects_reference_each_other_and_the_ingress_keeps_websockets_open() -> None:
    deployments, services = k8s("Deployment"), k8s("Service")
    for name, deploy in deployments.items():
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        spec = deploy["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        container = spec["containers"][0]
        assert set(container["resources"]["requests"]) >= {"cpu", "memory"}, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for name, svc in services.items():
        targets = [
            d
            for d in deployments.values()
            if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        assert svc["spec"].get("sessionAffinity", "None") == "None", "no sticky sessions: any replica resumes"
        ports = {p["name"] for p in targets[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert all(p["targetPort"] in ports for p in svc["spec"]["ports"]), name
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        objects = k8s(kind)
        assert set(objects) == set(deployments), (kind, set(objects))
    for name, pdb in k8s("PodDisruptionBudget").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, hpa in k8s("HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] >= 2
    (ingress,) = k8s("Ingress").values()
    notes = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600, key
    assert not any("affinity" in k or "upstream-hash-by" in k for k in notes), "no sticky sessions"
    backends = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] in services, backend
            assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            backends.add(backend["name"])
    assert backends == {AUTH, SESSION}


# == F41: the dashboard against the live services' /metrics ======================================


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [str(v.get("definition", "")) for v in dashboard["templating"]["list"]]
    names = set()
    for expr in exprs:
        found = set(re.findall(r"\b(tether_[a-z0-9_]+)\b", expr))
        assert found or not expr, f"a dashboard query with no Tether metric: {expr}"
        names |= found
    return names


def exposed_names(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, including labelled families that have no
    sample yet (from their ``# TYPE`` line: histograms expose _bucket/_sum/_count)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "untyped": ("",),
    }
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base + s for s in suffixes.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_F41_every_metric_on_the_dashboard_is_exposed_by_the_live_services(
    auth_factory: AuthServiceFactory, spawn_service: SpawnService
) -> None:
    auth = auth_factory.start()
    session = spawn_service(
        "tether_session",
        {
            "DATABASE_URL": auth.dsn,
            "TETHER_SESSION_PORT": "0",
            "TETHER_AUTH_URL": auth.url,
            "TETHER_AUTH_SERVICE_KEY": auth.service_key,
            "TETHER_INGEST_KEYS": "agent=ing_" + uuid.uuid4().hex,
        },
        name="session",
    )
    session.wait_ready()
    pages = {}
    for service, url in ((AUTH, auth.url), (SESSION, session.url)):
        with sync_client(CONTRACTS[service], url, timeout=scaled(10)) as http:
            response = http.get("/metrics")
        assert response.status_code == 200
        pages[service] = exposed_names(response.text)
    wanted = dashboard_metric_names()
    everything = pages[AUTH] | pages[SESSION]
    missing = sorted(wanted - everything)
    assert not missing, f"the dashboard queries metrics no service exposes: {missing}"
    # The panels the dashboard promises (F41) are all there.
    for name in (
        "tether_ws_connections_open",
        "tether_ws_connects_total",
        "tether_ws_closes_total",
        "tether_ws_frames_in_total",
        "tether_ws_frames_out_total",
        "tether_events_published_total",
        "tether_events_delivered_total",
        "tether_resumes_total",
        "tether_replayed_events_total",
        "tether_tokens_issued_total",
        "tether_token_consume_total",
        "tether_http_errors_total",
        "tether_rate_limited_total",
        "tether_startup_phase_seconds",
        "tether_db_pool_connections",
        "tether_http_request_seconds_bucket",
    ):
        assert name in wanted, f"the dashboard has no panel for {name}"


# == the local proxy (./dev up --replicas N) =====================================================


def test_proxy_request_head_rewrite() -> None:
    plain = RequestHead.parse(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: 5")
    assert not plain.is_upgrade
    out = plain.forwarded("10.0.0.1").decode()
    assert out.startswith("GET /readyz HTTP/1.1\r\nHost: x\r\n")
    assert out.endswith("\r\n\r\n")
    assert "Connection: close\r\n" in out
    assert "keep-alive" not in out.lower()
    assert "X-Forwarded-For: 10.0.0.1\r\n" in out
    ws = RequestHead.parse(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: abc\r\nX-Forwarded-For: 1.2.3.4"
    )
    assert ws.is_upgrade
    out = ws.forwarded("10.0.0.1").decode()
    assert "Connection: Upgrade\r\n" in out
    assert "Upgrade: websocket\r\n" in out
    assert "Connection: close" not in out
    assert "X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n" in out
    for bad in (b"GARBAGE", b"GET / HTTP/2\r\nHost: x", b"GET / HTTP/1.1\r\nno colon here"):
        with pytest.raises(ValueError):
            RequestHead.parse(bad)


def start_proxy(spawn_service: SpawnService, backends: list[str]) -> ServiceProcess:
    proxy = spawn_service(
        PROXY_MODULE,
        {
            "TETHER_PROXY_PORT": "0",
            "TETHER_PROXY_BACKENDS": ",".join(backends),
            "TETHER_PROXY_HEALTH_INTERVAL_MS": "100",
        },
        name="proxy",
    )
    proxy.wait_listening()
    return proxy


def backend(replica: SessionReplica) -> str:
    return f"127.0.0.1:{replica.proc.port}"


@asynccontextmanager
async def ws_via(proxy: ServiceProcess) -> AsyncIterator[WsClient]:
    url = proxy.url.replace("http://", "ws://") + "/v1/ws"
    async with open_websocket_url(url, extra_headers=[("Origin", ALLOWED_ORIGIN)], connect_timeout=scaled(10)) as ws:
        yield WsClient(ws)


async def served_by(stack: Stack, connection_id: str) -> int:
    """The index of the replica whose log has this connection's ``ws_ready``."""

    async def find() -> list[int]:
        return [i for i, r in enumerate(stack.replicas) if r.proc.events("ws_ready", connection_id=connection_id)]

    (index,) = await await_until(find, timeout=10, what=f"ws_ready of {connection_id} in a replica's log")
    return index


def note(n: int) -> dict[str, Any]:
    return {"event_id": f"proxy-{uuid.uuid4().hex[:8]}-{n}", "kind": "note", "data": {"n": n}}


@pytest.mark.trio
async def test_F15_proxy_balances_websockets_and_stops_routing_to_a_draining_replica(
    stack_factory: StackFactory, spawn_service: SpawnService
) -> None:
    stack = stack_factory.start(replicas=2)
    proxy = start_proxy(spawn_service, [backend(r) for r in stack.replicas])
    await proxy.wait_ready_async()
    assert proxy.events("listening")[0]["healthy"] == [backend(r) for r in stack.replicas]
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "through the proxy")

    # Round robin: four sessions through one URL, two on each replica.
    async with AsyncExitStack() as sockets:
        clients: list[tuple[WsClient, int]] = []
        for _ in range(4):
            client = await sockets.enter_async_context(ws_via(proxy))
            ready = await client.init(await stack.token(user.api_key), {"id": project["id"]})
            assert ready["type"] == "ready", ready
            clients.append((client, await served_by(stack, ready["connection_id"])))
        assert sorted(i for _, i in clients) == [0, 0, 1, 1], clients

        # Events reach every socket, whichever replica holds it.
        await stack.publish(project["id"], [note(1), note(2), note(3)], replica=1)
        for client, _ in clients:
            await client.events_until(lambda e: e["data"].get("n") == 3)
            assert [e["seq"] for e in client.events] == [1, 2, 3]

        # SIGTERM replica 0 (by PID): its sockets get the retryable 4502 through the proxy.
        doomed, survivor = stack.replicas
        os.kill(doomed.proc.pid, signal.SIGTERM)
        draining = close_catalogue()["draining"]
        for client, index in clients:
            if index == 0:
                closed = await client.closed(timeout=15)
                assert closed.code == draining["code"] == 4502, closed
                assert closed.error is not None, closed
                assert closed.error["code"] == "draining", closed.error

        async def taken_out() -> list[dict[str, Any]]:
            return proxy.events("backend_down", backend=backend(doomed))

        async def exited() -> bool:
            return not doomed.proc.is_running()

        await await_until(
            taken_out, timeout=10, what="the proxy to take the draining replica out of rotation", describe=proxy.tail
        )
        await await_until(exited, timeout=30, what="the drained replica to exit", describe=doomed.proc.tail)
        (finished,) = doomed.proc.events("drain_finished")
        assert finished["remaining"] == 0, finished

    # New connections through the same URL all land on the survivor; a client that was on
    # the drained replica resumes there from the log: no gap, no duplicate.
    for attempt in range(4):
        async with ws_via(proxy) as client:
            token = await stack.token(user.api_key)
            ready = await client.init(token, {"id": project["id"]}, resume_from=1 if attempt == 0 else None)
            assert ready["type"] == "ready", ready
            assert await served_by(stack, ready["connection_id"]) == 1
            if attempt == 0:
                assert (ready["resume_from"], ready["last_seq"]) == (1, 3), ready
                await client.events_until(lambda e: e["seq"] == 3)
                assert [e["seq"] for e in client.events] == [2, 3]
    async with httpx.AsyncClient(base_url=proxy.url, timeout=scaled(5)) as http:
        for _ in range(4):
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
    assert survivor.proc.is_running()
    assert proxy.terminate() == 0, proxy.tail()


@pytest.mark.trio
async def test_proxy_never_routes_to_a_replica_that_is_not_ready(
    stack_factory: StackFactory, spawn_service: SpawnService
) -> None:
    stack = stack_factory.start(replicas=1)
    # A replica that listens but can never become ready: its auth-token URL goes nowhere.
    stuck = stack.add_replica({"TETHER_AUTH_URL": f"http://127.0.0.1:{free_port()}"}, wait=False)
    async with httpx.AsyncClient(timeout=scaled(5)) as http:
        assert (await http.get(stuck.url + "/readyz")).status_code == 503
    proxy = start_proxy(spawn_service, [backend(stuck), backend(stack.replicas[0])])
    assert proxy.events("listening")[0]["healthy"] == [backend(stack.replicas[0])]
    async with httpx.AsyncClient(base_url=proxy.url, timeout=scaled(5)) as http:
        for _ in range(6):
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.headers.get("connection") == "close"  # one request per connection: each is balanced
    # Only a not-ready backend: the proxy answers 503 itself, with Retry-After.
    lonely = start_proxy(spawn_service, [backend(stuck)])
    async with httpx.AsyncClient(base_url=lonely.url, timeout=scaled(5)) as http:
        response = await http.get("/v1/projects")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "no_backend"
    assert lonely.events("no_backend"), lonely.tail()


def consecutive_free_ports(count: int) -> int:
    """A base port such that ``base .. base+count-1`` are free right now (./dev up numbers
    the session replicas consecutively)."""
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports")


@pytest.mark.parametrize("replicas", [1, 2])
def test_dev_up_puts_the_proxy_in_front_of_several_replicas_only(
    pg_server: PgServer,
    replicas: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``./dev up --replicas N --check`` (run in-process, its logs under tmp_path): with N > 1
    the proxy is started in front of the replicas and is the demo page; with N = 1 nothing
    changes (no proxy, the replica itself is the demo page)."""
    auth_port, session_port, proxy_port = free_port(), consecutive_free_ports(replicas), free_port()
    monkeypatch.setattr(up, "STATE", tmp_path)
    monkeypatch.setenv("DATABASE_URL", pg_server.fresh_database("devup"))
    for name in [k for k in os.environ if k.startswith("TETHER_") and k != "TETHER_TEST_TIMEOUT_SCALE"]:
        monkeypatch.delenv(name)
    previous = signal.getsignal(signal.SIGTERM)  # up.main installs its own SIGTERM handler
    try:
        code = up.main(
            [
                "--check",
                f"--replicas={replicas}",
                f"--auth-port={auth_port}",
                f"--session-port={session_port}",
                f"--proxy-port={proxy_port}",
            ]
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = "\n".join(line for line in capsys.readouterr().out.splitlines() if "api_key" not in line.lower())
    assert code == 0, out
    demo = re.search(r"demo page\s+(\S+)", out)
    assert demo, out
    proxy_log = tmp_path / "proxy.log"
    if replicas == 1:
        assert demo.group(1) == f"http://127.0.0.1:{session_port}/", out
        assert not proxy_log.exists()
        return
    assert demo.group(1) == f"http://127.0.0.1:{proxy_port}/", out
    lines = [json.loads(line) for line in proxy_log.read_text().splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    expected = [f"127.0.0.1:{session_port + i}" for i in range(replicas)]
    assert (listening["port"], listening["healthy"]) == (proxy_port, expected), listening
    assert lines[-1]["event"] == "stopped", lines[-1]
