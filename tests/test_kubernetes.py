"""Kubernetes backend — what it was and was not tested against.

No Kubernetes API server can run on these machines (no container engine; kind, k3s and minikube
download binaries), so nothing here ran a pod. What is tested:

* the Job manifest, against a golden file (tests/golden/kubernetes_job.json) and against the
  official client's own ``V1Job`` model (every field survives deserialization, so no name is
  misspelt);
* the state mapping, from ``V1Job``/``V1Pod`` objects of the official client built here the way
  the API returns them (conditions, container states);
* the API calls, made by the official client (its ``ApiClient``, serialization, URL building,
  query parameters, patch content types and error handling) against a small local HTTP server
  that records each request and answers with JSON shaped like the API's. The server is a
  recorder, not a Kubernetes: it checks nothing a real API server would (admission, schema,
  authentication, the job controller's behaviour).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client as k8s

from clusterjupyter.errors import ClusterError, CommandError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.resources import Resources
from clusterjupyter.schedulers.base import JobSpec
from clusterjupyter.schedulers.kubernetes import KubernetesScheduler
from clusterjupyter.states import JobState
from clusterjupyter.transports import LocalTransport

from helpers import check_golden, write_profiles
from shells import ok, run

JOB_ID = "0123456789abcdef0123456789abcdef"
NS = "science"


# -- a recording HTTP server that answers like the API ------------------------------------------

class Recorder:
    """Requests seen (method, path, query, content type, JSON body) and canned answers."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.routes: dict[tuple[str, str], tuple[int, dict]] = {}

    def answer(self, method: str, path: str, status: int, body: dict) -> None:
        self.routes[(method, path)] = (status, body)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.requests.append({"method": h.command, "path": url.path,
                              "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                              "content_type": h.headers.get("Content-Type", ""),
                              "authorization": h.headers.get("Authorization", ""), "body": body})
        status, answer = self.routes.get((h.command, url.path), (404, status_body(404, "")))
        if answer == "echo":
            answer = {**body, "status": {}}
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def status_body(code: int, message: str) -> dict:
    reason = {403: "Forbidden", 404: "NotFound", 409: "AlreadyExists"}.get(code, "")
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}


@pytest.fixture
def api_server():
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            rec.handle(self)

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def user(monkeypatch):
    monkeypatch.setenv("LOGNAME", "alice")       # getpass.getuser() reads it first
    return "alice"


def options(url: str = "http://127.0.0.1:9", **extra) -> dict:
    return {"image": "registry.example.org/sci/python:3.11", "pvc": "cj-work",
            "namespace": NS, "api_url": url, "run_as_user": 1000, "run_as_group": 100,
            **extra}


def spec(tmp_path: Path | None = None, **resources) -> JobSpec:
    root = str(tmp_path) if tmp_path else "/srv/cj-work"
    return JobSpec(job_id=JOB_ID, name="fit model; rm -rf ~", paths=JobPaths(root, JOB_ID),
                   resources=Resources.parse(resources), python="ignored",
                   secret_path=str(tmp_path / "secret") if tmp_path else "/home/a/secret",
                   prelude=["source /opt/env.sh"], env={"OMP_NUM_THREADS": "2"})


# -- the manifest -------------------------------------------------------------------------------

def test_manifest_matches_golden_and_the_clients_model(user):
    sched = KubernetesScheduler(LocalTransport(), options(node_selector={"gpu": "a100"}))
    manifest = sched.manifest(spec(time="15m", cpus=2, mem="4G", gpus="1"))
    check_golden("kubernetes_job.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert manifest["spec"]["activeDeadlineSeconds"] == 900
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4096Mi",
                                                "nvidia.com/gpu": "1"}
    # the job directory is the same path in the pod: the claim is mounted at the work root
    assert container["volumeMounts"][0] == {"name": "work", "mountPath": "/srv/cj-work"}
    assert container["command"][-2:] == ["clusterjupyter.runner", f"/srv/cj-work/jobs/{JOB_ID}"]
    assert container["command"][:2] == ["/bin/sh", "-c"]      # no shell sees the job name
    assert "rm -rf" not in " ".join(container["command"])
    # every field is one the official client knows (a misspelt one would be dropped)
    api = k8s.ApiClient()
    model = api._ApiClient__deserialize(json.loads(json.dumps(manifest)), "V1Job")
    assert api.sanitize_for_serialization(model) == manifest


def test_dry_run_through_the_magic_and_bad_profiles(shell, cj_home, user):
    write_profiles(cj_home, {
        "k8s": {"scheduler": "kubernetes", "scheduler_options": options()},
        "typo": {"scheduler": "kubernetes", "scheduler_options": options(imagee="x")},
        "partial": {"scheduler": "kubernetes", "scheduler_options": {"image": "x"}}})
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        ok(shell, "%%cluster k8s --dry-run --time 10 --cpus 2 --mem 1G\ny = 1")
    doc = json.loads(cap.stdout[cap.stdout.index("{"):])
    assert doc["kind"] == "Job" and doc["spec"]["activeDeadlineSeconds"] == 600
    r = run(shell, "%%cluster typo\ny = 1")
    assert "imagee" in str(r.error_in_exec) and "pvc" in str(r.error_in_exec)
    r = run(shell, "%%cluster partial\ny = 1")
    assert "pvc" in str(r.error_in_exec) and "missing" in str(r.error_in_exec)
    r = run(shell, "%%cluster k8s --partition gpu\ny = 1")
    assert "partition" in str(r.error_in_exec)


# -- states from API-shaped objects -------------------------------------------------------------

def job(status: k8s.V1JobStatus, suspend: bool = False) -> k8s.V1Job:
    return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=f"cj-{JOB_ID}", labels={
        "clusterjupyter.io/job": JOB_ID}), spec=k8s.V1JobSpec(template=k8s.V1PodTemplateSpec(),
                                                             suspend=suspend), status=status)


def cond(type_: str, reason: str = "", message: str = "") -> k8s.V1JobCondition:
    return k8s.V1JobCondition(type=type_, status="True", reason=reason, message=message)


def pod(terminated: k8s.V1ContainerStateTerminated | None = None,
        waiting: k8s.V1ContainerStateWaiting | None = None) -> k8s.V1Pod:
    state = k8s.V1ContainerState(terminated=terminated, waiting=waiting)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(labels={"clusterjupyter.io/job": JOB_ID}),
                     spec=k8s.V1PodSpec(containers=[], node_name="node-3"),
                     status=k8s.V1PodStatus(container_statuses=[k8s.V1ContainerStatus(
                         name="cell", image="x", image_id="", ready=False, restart_count=0,
                         state=state)]))


def test_states_from_api_objects():
    sched = KubernetesScheduler(LocalTransport(), options())
    st = sched.native(job(k8s.V1JobStatus(succeeded=1, conditions=[cond("Complete")])))
    assert st.state is JobState.COMPLETED
    st = sched.native(job(k8s.V1JobStatus(failed=1, conditions=[
        cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])))
    assert st.state is JobState.TIMEOUT
    oom = pod(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled"))
    st = sched.native(job(k8s.V1JobStatus(failed=1, conditions=[
        cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])),
        [oom])
    assert st.state is JobState.OUT_OF_MEMORY and st.exit_code == 137 and st.host == "node-3"
    crash = pod(terminated=k8s.V1ContainerStateTerminated(exit_code=70, reason="Error"))
    st = sched.native(job(k8s.V1JobStatus(failed=1, conditions=[
        cond("Failed", "BackoffLimitExceeded")])), [crash])
    assert st.state is JobState.FAILED and "exit code 70" in st.reason
    st = sched.native(job(k8s.V1JobStatus(active=1, ready=1)))
    assert st.state is JobState.RUNNING
    pulling = pod(waiting=k8s.V1ContainerStateWaiting(reason="ImagePullBackOff",
                                                      message="Back-off pulling image"))
    st = sched.native(job(k8s.V1JobStatus(active=1, ready=0)), [pulling])
    assert st.state is JobState.PENDING and "cannot pull the image" in st.reason
    st = sched.native(job(k8s.V1JobStatus(conditions=[cond("Suspended", "JobSuspended")]),
                          suspend=True))
    assert st.state is JobState.PENDING and "held" in st.reason


# -- the client's calls, end to end over HTTP ---------------------------------------------------

def job_json(name: str, status: dict, job_id: str = JOB_ID) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"clusterjupyter.io/job": job_id,
                                    "clusterjupyter.io/user": "alice",
                                    "app.kubernetes.io/managed-by": "clusterjupyter"},
                         "annotations": {"clusterjupyter.io/name": "cell-3"}},
            "spec": {"template": {"spec": {"containers": []}}}, "status": status}


def test_submit_creates_the_secret_then_the_job(api_server, tmp_path, user):
    (tmp_path / "secret").write_bytes(b"k" * 64)
    api_server.answer("GET", f"/api/v1/namespaces/{NS}/secrets/clusterjupyter-alice", 404,
                      status_body(404, 'secrets "clusterjupyter-alice" not found'))
    api_server.answer("POST", f"/api/v1/namespaces/{NS}/secrets", 201, {"kind": "Secret"})
    api_server.answer("POST", f"/apis/batch/v1/namespaces/{NS}/jobs", 201, "echo")
    sched = KubernetesScheduler(LocalTransport(), options(api_server.url))
    s = spec(tmp_path, time=60)
    assert sched.submit(s) == f"cj-{JOB_ID}"
    get, create_secret, create_job = api_server.requests
    assert create_secret["body"]["data"] == {"secret": base64.b64encode(b"k" * 64).decode()}
    assert create_secret["body"]["metadata"]["name"] == "clusterjupyter-alice"
    assert create_job["body"] == sched.manifest(s)
    assert create_job["query"] == {"fieldValidation": "Strict"}
    # client 37 sends no Content-Type on create; the API server then reads JSON, its default
    assert create_job["content_type"] in ("", "application/json")
    # the Secret is checked once per scheduler, not for every job
    sched.submit(s)
    assert [r["method"] for r in api_server.requests[3:]] == ["POST"]


def test_status_is_one_list_call_plus_pods_only_when_needed(api_server):
    other = "fedcba9876543210fedcba9876543210"
    api_server.answer("GET", f"/apis/batch/v1/namespaces/{NS}/jobs", 200, {
        "kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": [
            job_json(f"cj-{JOB_ID}", {"active": 1, "ready": 1,
                                      "startTime": "2026-11-21T10:00:00Z"}),
            job_json(f"cj-{other}", {"failed": 1, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
                job_id=other)]})
    api_server.answer("GET", f"/api/v1/namespaces/{NS}/pods", 200, {
        "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [{
            "metadata": {"name": f"cj-{other}-x7k2p", "labels": {"clusterjupyter.io/job": other}},
            "spec": {"containers": [], "nodeName": "node-1"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "cell", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}]})
    sched = KubernetesScheduler(LocalTransport(), options(api_server.url))
    out = sched.status([f"cj-{JOB_ID}", f"cj-{other}"], [JOB_ID, other])
    assert out[f"cj-{JOB_ID}"].state is JobState.RUNNING
    assert out[f"cj-{other}"].state is JobState.OUT_OF_MEMORY
    jobs, pods = api_server.requests
    selector = jobs["query"]["labelSelector"]
    assert selector == (f"app.kubernetes.io/managed-by=clusterjupyter,"
                        f"clusterjupyter.io/job in ({JOB_ID},{other})")
    assert pods["query"]["labelSelector"].endswith(f"clusterjupyter.io/job in ({other})")
    # all running: one call, no pods
    api_server.requests.clear()
    api_server.answer("GET", f"/apis/batch/v1/namespaces/{NS}/jobs", 200, {
        "kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": [
            job_json(f"cj-{JOB_ID}", {"active": 1, "ready": 1,
                                      "startTime": "2026-11-21T10:00:00Z"})]})
    assert sched.status([f"cj-{JOB_ID}"], [JOB_ID])[f"cj-{JOB_ID}"].state is JobState.RUNNING
    assert len(api_server.requests) == 1
    [entry] = sched.queue()
    assert entry.name == "cell-3" and entry.user == "alice" and entry.state is JobState.RUNNING
    assert api_server.requests[-1]["query"]["labelSelector"] == (
        f"app.kubernetes.io/managed-by=clusterjupyter,clusterjupyter.io/user={_me()}")


def _me() -> str:
    import getpass

    return getpass.getuser()


def test_cancel_hold_release_and_errors(api_server):
    path = f"/apis/batch/v1/namespaces/{NS}/jobs/cj-{JOB_ID}"
    api_server.answer("DELETE", path, 200, {"kind": "Status", "status": "Success"})
    api_server.answer("PATCH", path, 200, job_json(f"cj-{JOB_ID}", {}))
    api_server.answer("GET", path, 200, job_json(f"cj-{JOB_ID}", {"active": 1, "ready": 0}))
    sched = KubernetesScheduler(LocalTransport(), options(api_server.url))
    sched.cancel([f"cj-{JOB_ID}"])
    delete = api_server.requests[-1]
    assert delete["method"] == "DELETE"
    assert (delete["body"] or {}).get("propagationPolicy") == "Foreground" or \
        delete["query"].get("propagationPolicy") == "Foreground"
    sched.hold(f"cj-{JOB_ID}")
    sched.release(f"cj-{JOB_ID}")
    hold, release = api_server.requests[-2:]
    assert hold["body"] == {"spec": {"suspend": True}}
    assert release["body"] == {"spec": {"suspend": False}}
    assert "patch" in hold["content_type"]
    # a running pod is not suspended (that would kill it)
    api_server.answer("GET", path, 200, job_json(f"cj-{JOB_ID}", {"active": 1, "ready": 1}))
    with pytest.raises(ClusterError, match="held"):
        sched.hold(f"cj-{JOB_ID}")
    # a job already gone is not an error; a refusal is, with the API's own message
    sched.cancel(["cj-gone"])
    api_server.answer("GET", f"/apis/batch/v1/namespaces/{NS}/jobs", 403, status_body(
        403, 'jobs.batch is forbidden: User "alice" cannot list resource "jobs"'))
    with pytest.raises(CommandError, match="cannot list resource") as info:
        sched.status([f"cj-{JOB_ID}"], [JOB_ID])
    assert info.value.returncode == 403


def test_unreachable_api_server_is_a_clear_error():
    sched = KubernetesScheduler(LocalTransport(), options("http://127.0.0.1:9",
                                                          request_timeout=2))
    with pytest.raises(ClusterError, match="127.0.0.1:9"):
        sched.status([f"cj-{JOB_ID}"], [JOB_ID])


def test_kubeconfig_context_gives_server_and_namespace(api_server, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(f"""\
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {{server: "{api_server.url}"}}
users:
- name: alice
  user: {{token: not-a-real-token}}
contexts:
- name: lab
  context: {{cluster: lab, user: alice, namespace: lab-ns}}
- name: other
  context: {{cluster: lab, user: alice, namespace: other-ns}}
current-context: lab
""")
    opts = {"image": "x", "pvc": "w", "kubeconfig": str(kubeconfig)}
    api_server.answer("GET", "/apis/batch/v1/namespaces/other-ns/jobs", 200, {
        "kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": []})
    sched = KubernetesScheduler(LocalTransport(), {**opts, "context": "other"})
    assert sched.namespace == "other-ns"
    assert sched.status([f"cj-{JOB_ID}"], [JOB_ID]) == {}
    [req] = api_server.requests
    assert req["path"] == "/apis/batch/v1/namespaces/other-ns/jobs"
    assert req["authorization"] == "Bearer not-a-real-token"      # the kubeconfig's user
    assert KubernetesScheduler(LocalTransport(), opts).namespace == "lab-ns"
    missing = KubernetesScheduler(LocalTransport(), {**opts, "kubeconfig": str(tmp_path / "no")})
    with pytest.raises(ClusterError, match="kubeconfig"):
        missing.status([f"cj-{JOB_ID}"], [JOB_ID])
