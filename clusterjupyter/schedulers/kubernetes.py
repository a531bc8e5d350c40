"""Kubernetes: one ``batch/v1`` Job per cell, through the official ``kubernetes`` client.

The pod runs ``python -m clusterjupyter.runner JOBDIR`` in the profile's image. The work root
is a PersistentVolumeClaim mounted in the pod **at the same path** as where this kernel sees
it (a JupyterHub-on-Kubernetes user pod with the same claim, or a machine with the same NFS
export), so the job directory is one path everywhere and the local transport moves the files.
The kernel's secret reaches the pod as a Kubernetes Secret (created from the secret file if it
is missing); the pod copies it into a memory-backed 0600 file before starting the runner.

Resources become container requests and limits (``cpu``, ``memory``, ``nvidia.com/gpu``),
``--time`` becomes ``activeDeadlineSeconds``. Status of all active jobs is one
``list_namespaced_job`` call with a set-based label selector; only jobs that failed or wait
for their pod add one ``list_namespaced_pod`` call (OOMKilled, image pull errors,
unschedulable). Cancel deletes the Job with foreground propagation (its pod goes too); hold and
release set ``spec.suspend``.

A sweep is one Indexed Job (``completionMode: Indexed``): Kubernetes gives each pod its
``JOB_COMPLETION_INDEX``, which picks the element (through the ``CJ_INDICES`` list when a retry
runs only some elements); ``backoffLimitPerIndex: 0`` runs each element once without a failed
element stopping the others, ``parallelism`` is ``--max-running`` and ``--time`` is each pod's
``activeDeadlineSeconds``. An element's native id is ``JOBNAME[INDEX]``; its state comes from
the Job's ``completedIndexes`` / ``failedIndexes`` and, while it runs, from its pod. Only the
generated manifest and the element-picking shell code were tested, not a real cluster.

This scheduler talks to the API server instead of running commands: every API call goes
through :meth:`KubernetesScheduler.api` (the single seam, one error type). It was tested
against the client's own serialization and a local HTTP server answering with API-shaped
JSON, not against a real API server (see tests/test_kubernetes.py).

Profile options (``scheduler_options``): see :data:`OPTIONS`.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import time
from typing import Any, ClassVar, Iterable, Sequence

from ..errors import ClusterError, CommandError
from ..resources import Resources
from ..states import JobState
from ..sweep import task_set as index_set
from ..text import hms
from ..transports.base import Transport
from .base import JobSpec, NativeStatus, QueueEntry, Scheduler
from . import kubemanifest as km
from .kubemanifest import (ANNOTATION_INDICES, ELEMENT, LABEL_JOB, LABEL_MANAGED,  # noqa: F401
                           LABEL_USER, SECRET_DIR, Site, _label_value, job_name)

_S = JobState

#: every option, with what it means (an unknown option is refused, listing these)
OPTIONS: dict[str, str] = {
    "image": "container image with Python, dill and clusterjupyter's runtime (required)",
    "pvc": "PersistentVolumeClaim holding the profile's workdir (required); mounted at the "
           "same path in the pod",
    "pvc_sub_path": "sub-path of the claim that is the workdir (default: the claim's root)",
    "namespace": "namespace of the jobs (default: the kubeconfig context's, else 'default')",
    "python": "interpreter in the image (default 'python3')",
    "api_url": "API server URL without kubeconfig, e.g. http://127.0.0.1:8001 (kubectl proxy)",
    "kubeconfig": "kubeconfig file (default: $KUBECONFIG or ~/.kube/config; in a pod: the "
                  "service account)",
    "context": "kubeconfig context",
    "secret_name": "Secret holding the HMAC key (key 'secret'; default clusterjupyter-USER)",
    "create_secret": "create or update that Secret from the secret file (default true)",
    "run_as_user": "uid the pod runs as (default: this kernel's uid; job dirs are 0700)",
    "run_as_group": "gid the pod runs as (default: this kernel's gid)",
    "service_account": "service account of the pod",
    "image_pull_policy": "Always, IfNotPresent or Never",
    "node_selector": "table of node labels the pod must run on",
    "gpu_resource": "extended resource for --gpus (default 'nvidia.com/gpu')",
    "ttl_seconds": "seconds a finished Job is kept before Kubernetes deletes it (default 3600)",
    "request_timeout": "seconds an API call may take (default 30)",
}

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubernetesScheduler(Scheduler):
    name = "kubernetes"
    poll_interval = 2.0
    option_help = OPTIONS

    #: true Job conditions, in the order they are looked at
    state_map: ClassVar[dict[str, JobState]] = {
        "Complete": _S.COMPLETED, "SuccessCriteriaMet": _S.COMPLETED,
        "Failed": _S.FAILED, "FailureTarget": _S.FAILED, "Suspended": _S.PENDING,
    }
    #: why a Job or its pod ended: condition, pod and container reasons
    final_reasons: ClassVar[dict[str, tuple[JobState, str]]] = {
        "DeadlineExceeded": (_S.TIMEOUT, "reached its time limit (activeDeadlineSeconds, "
                                         "--time)"),
        "OOMKilled": (_S.OUT_OF_MEMORY, "ran out of memory (OOMKilled: used more than --mem)"),
        "Evicted": (_S.FAILED, "evicted from its node"),
        "BackoffLimitExceeded": (_S.FAILED, "its pod failed"),
        "PodFailurePolicy": (_S.FAILED, "its pod failed"),
        "ContainerCannotRun": (_S.FAILED, "the container could not run"),
        "StartError": (_S.FAILED, "the container could not start"),
    }
    #: why a pod is not running yet
    pending_reasons: ClassVar[dict[str, str]] = {
        "Unschedulable": "no node can take it yet",
        "ContainerCreating": "its container is being created",
        "PodInitializing": "its pod is starting",
        "ImagePullBackOff": "cannot pull the image",
        "ErrImagePull": "cannot pull the image",
        "InvalidImageName": "the image name is invalid",
        "CreateContainerConfigError": "its container is misconfigured",
    }

    def __init__(self, transport: Transport, options: dict[str, Any] | None = None):
        super().__init__(transport, options)
        missing = [k for k in ("image", "pvc") if not self.options.get(k)]
        if missing:
            raise ClusterError(f"kubernetes: scheduler option(s) {', '.join(missing)} missing: "
                               + "; ".join(f"{k}: {OPTIONS[k]}" for k in missing))
        self._api_client: Any = None
        self._secret_ok = False
        self._namespace: str | None = self.options.get("namespace") or None

    #: an Indexed Job's pod finds its element from this (see :data:`ELEMENT`)
    array_index = "${JOB_COMPLETION_INDEX}"

    # -- the manifest (built by kubemanifest's pure functions) --------------------------------
    def render(self, spec: JobSpec) -> str:
        """The Job manifest (JSON) — what ``%cluster script`` shows and job.sh holds."""
        return json.dumps(self.manifest(spec), indent=1, sort_keys=True) + "\n"

    def _site(self) -> Site:
        return Site(self.options, self._user(), self.namespace, self.secret_name)

    def manifest(self, spec: JobSpec) -> dict[str, Any]:
        return km.job_manifest(self._site(), spec)

    def array_manifest(self, spec: JobSpec, indices: Sequence[int],
                       max_running: int) -> dict[str, Any]:
        return km.indexed_job(self._site(), spec, indices, max_running)

    def amounts(self, res: Resources) -> dict[str, str]:
        return km.amounts(self.options, res)

    def container(self, spec: JobSpec) -> dict[str, Any]:
        return km.container(self._site(), spec)

    def pod(self, spec: JobSpec) -> dict[str, Any]:
        return km.pod(self._site(), spec)

    @property
    def secret_name(self) -> str:
        return str(self.options.get("secret_name") or
                   f"clusterjupyter-{_label_value(self._user()).lower().replace('_', '-')}")

    # -- the API ----------------------------------------------------------------------------
    def api(self, call: str, *args: Any, **kw: Any) -> Any:
        """Make one API call, ``"batch.create_namespaced_job"`` or ``"core.…"``; every call
        goes through here and fails with one error type (the API's status and message)."""
        client = self._client()
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        group, _, method = call.partition(".")
        target = k8s.BatchV1Api(client) if group == "batch" else k8s.CoreV1Api(client)
        timeout = float(self.options.get("request_timeout", 30))
        what = [method, *(a for a in args if isinstance(a, str))]
        try:
            return getattr(target, method)(*args, _request_timeout=timeout, **kw)
        except ApiException as e:
            raise CommandError(what, int(e.status or 1), "", _api_message(e),
                               client.configuration.host) from None
        except (HTTPError, OSError) as e:       # cannot connect, TLS, timeout …
            raise CommandError(what, 1, "", f"cannot reach the API server: {e}",
                               client.configuration.host) from None

    def _client(self) -> Any:
        if self._api_client is None:
            try:
                from kubernetes import client, config
            except ImportError:
                raise ClusterError("the kubernetes scheduler needs the kubernetes package: "
                                   "pip install 'clusterjupyter[kubernetes]'") from None
            cfg = client.Configuration()
            try:
                if self.options.get("api_url"):
                    cfg.host = str(self.options["api_url"]).rstrip("/")
                elif os.environ.get("KUBERNETES_SERVICE_HOST") \
                        and not self.options.get("kubeconfig"):
                    config.load_incluster_config(client_configuration=cfg)
                else:
                    config.load_kube_config(config_file=self.options.get("kubeconfig"),
                                            context=self.options.get("context"),
                                            client_configuration=cfg)
            except (config.ConfigException, OSError, ValueError) as e:
                raise ClusterError(f"kubernetes: cannot load the cluster's configuration ({e}); "
                                   "set the kubeconfig (and context) or api_url scheduler "
                                   "options") from None
            self._api_client = client.ApiClient(cfg)
        return self._api_client

    @property
    def namespace(self) -> str:
        """The option, else the pod's own namespace (in a cluster) or the kubeconfig
        context's, else ``default``."""
        if self._namespace is None:
            self._namespace = self._context_namespace() or "default"
        return self._namespace

    def _context_namespace(self) -> str | None:
        if self.options.get("api_url"):
            return None
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.options.get("kubeconfig"):
            try:
                with open(SERVICE_ACCOUNT_NAMESPACE) as f:
                    return f.read().strip() or None
            except OSError:
                return None
        try:
            from kubernetes import config

            _, active = config.list_kube_config_contexts(
                config_file=self.options.get("kubeconfig"))
            if self.options.get("context"):
                contexts, _ = config.list_kube_config_contexts(
                    config_file=self.options.get("kubeconfig"))
                active = next((c for c in contexts if c["name"] == self.options["context"]),
                              active)
            return (active or {}).get("context", {}).get("namespace")
        except Exception:          # no kubeconfig yet: submission will say so clearly
            return None

    def _user(self) -> str:
        return getpass.getuser()

    def _ensure_secret(self, spec: JobSpec) -> None:
        """The Secret the pod reads the key from exists and holds this kernel's key."""
        if self._secret_ok or self.options.get("create_secret", True) is False:
            return
        key = self.transport.read(spec.secret_path).strip()
        data = {"secret": base64.b64encode(key).decode()}
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                "metadata": {"name": self.secret_name,
                             "labels": {LABEL_MANAGED: "clusterjupyter"}}}
        try:
            found = self.api("core.read_namespaced_secret", self.secret_name, self.namespace)
        except CommandError as e:
            if e.returncode != 404:
                raise
            self.api("core.create_namespaced_secret", self.namespace, body)
        else:
            if (found.data or {}).get("secret") != data["secret"]:
                self.api("core.replace_namespaced_secret", self.secret_name, self.namespace,
                         body)
        self._secret_ok = True

    # -- operations -------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> str:
        self._ensure_secret(spec)
        # Strict: the API server refuses a field it does not know instead of dropping it
        created = self.api("batch.create_namespaced_job", self.namespace, self.manifest(spec),
                           field_validation="Strict")
        return str(created.metadata.name)

    def submit_array(self, spec: JobSpec, indices: Sequence[int], max_running: int) -> str:
        self._ensure_secret(spec)
        created = self.api("batch.create_namespaced_job", self.namespace,
                           self.array_manifest(spec, indices, max_running),
                           field_validation="Strict")
        return str(created.metadata.name)

    def element_native_id(self, array_id: str, index: int) -> str:
        return f"{array_id}[{index}]"

    def array_of(self, native_id: str) -> str:
        return native_id.split("[")[0]

    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        if not native_ids:
            return {}
        # a sweep's elements: their Job is labelled with the array's prefix (24 digits)
        labels = [j[:24] if "[" in n else j for n, j in zip(native_ids, job_ids, strict=True)]
        jobs = self.api("batch.list_namespaced_job", self.namespace,
                        label_selector=_selector(labels)).items
        arrays = [j for j in jobs if (j.metadata.annotations or {}).get(ANNOTATION_INDICES)]
        out = self._elements(arrays, native_ids) if arrays else {}
        jobs = [j for j in jobs if j.metadata.name in native_ids]
        pods: dict[str, list[Any]] = {}
        curious = [j for j in jobs if self._needs_pods(j)]
        if curious:
            selector = _selector([(j.metadata.labels or {}).get(LABEL_JOB, "") for j in curious])
            for pod in self.api("core.list_namespaced_pod", self.namespace,
                                label_selector=selector).items:
                pods.setdefault((pod.metadata.labels or {}).get(LABEL_JOB, ""), []).append(pod)
        return {**out, **{j.metadata.name: self.native(j, pods.get(
            (j.metadata.labels or {}).get(LABEL_JOB, ""), [])) for j in jobs}}

    def _elements(self, arrays: Sequence[Any], native_ids: Sequence[str]
                  ) -> dict[str, NativeStatus]:
        """The elements of Indexed Jobs: final from ``completedIndexes`` / ``failedIndexes``,
        else running or waiting as their pod is (one pod listing for all the arrays)."""
        active = [j for j in arrays if j.status is not None and j.status.active]
        pods: dict[tuple[str, str], Any] = {}
        if active:
            selector = _selector([(j.metadata.labels or {}).get(LABEL_JOB, "") for j in active])
            for pod in self.api("core.list_namespaced_pod", self.namespace,
                                label_selector=selector).items:
                index = (pod.metadata.annotations or {}).get(
                    "batch.kubernetes.io/job-completion-index", "")
                pods[((pod.metadata.labels or {}).get(LABEL_JOB, ""), index)] = pod
        wanted = set(native_ids)
        out = {}
        for job in arrays:
            st = job.status
            label = (job.metadata.labels or {}).get(LABEL_JOB, "")
            done = index_set((st and st.completed_indexes) or "")
            failed = index_set((st and getattr(st, "failed_indexes", None)) or "")
            ended = self.native(job).state.final
            text = (job.metadata.annotations or {})[ANNOTATION_INDICES]
            order = [int(x) for x in text.split(",")] if "-" not in text else \
                sorted(index_set(text))
            for pos, index in enumerate(order):
                native_id = self.element_native_id(job.metadata.name, index)
                if native_id not in wanted:
                    continue
                pod = pods.get((label, str(pos)))
                if pos in done:
                    out[native_id] = NativeStatus(_S.COMPLETED, "", 0, native="Complete")
                elif pos in failed or ended:
                    out[native_id] = self._failed("Failed", _Condition("Failed"),
                                                  [pod] if pod else [], "")
                elif pod is not None and pod.status is not None \
                        and pod.status.phase == "Running":
                    out[native_id] = NativeStatus(_S.RUNNING, "", native="Running",
                                                  host=(pod.spec and pod.spec.node_name) or "")
                else:
                    out[native_id] = NativeStatus(_S.PENDING, self._waiting([pod] if pod
                                                                            else []),
                                                  native="Pending")
        return out

    def _needs_pods(self, job: Any) -> bool:
        st = job.status
        if st is None:
            return False
        failed = any(c.status == "True" and c.type in ("Failed", "FailureTarget")
                     for c in st.conditions or [])
        return failed or (bool(st.active) and st.ready == 0)

    def native(self, job: Any, pods: Sequence[Any] = ()) -> NativeStatus:
        """A ``V1Job`` (and its pods, when they were asked for) as a NativeStatus."""
        st = job.status
        conditions = [c for c in (st.conditions or []) if c.status == "True"] if st else []
        host = next((p.spec.node_name for p in pods if p.spec and p.spec.node_name), "")
        for word in self.state_map:
            cond = next((c for c in conditions if c.type == word), None)
            if cond is None:
                continue
            state = self.state_map[word]
            if state is _S.COMPLETED:
                return NativeStatus(state, "", 0, native=word, host=host)
            if state is _S.PENDING:
                return NativeStatus(state, "held (suspended)", native=word)
            return self._failed(word, cond, pods, host)
        if job.spec is not None and job.spec.suspend:
            return NativeStatus(_S.PENDING, "held (suspended)", native="Suspended")
        if st is not None and st.active:
            if st.ready == 0:
                return NativeStatus(_S.PENDING, self._waiting(pods), native="Pending", host=host)
            return NativeStatus(_S.RUNNING, "", native="Running", host=host)
        return NativeStatus(_S.PENDING, "its pod is being created", native="Created")

    def _failed(self, word: str, cond: Any, pods: Sequence[Any], host: str) -> NativeStatus:
        code = None
        reasons = [cond.reason or ""]
        for pod in pods:
            reasons.append((pod.status and pod.status.reason) or "")
            for cs in (pod.status and pod.status.container_statuses) or []:
                term = cs.state and cs.state.terminated
                if term is not None:
                    reasons.insert(0, term.reason or "")
                    code = term.exit_code
        for reason in reasons:
            if reason in self.final_reasons:
                state, text = self.final_reasons[reason]
                if code not in (None, 0) and state is _S.FAILED:
                    text += f" (exit code {code})"
                return NativeStatus(state, text, code, native=reason, host=host)
        message = cond.message or cond.reason or "failed"
        return NativeStatus(_S.FAILED, message, code, native=word, host=host)

    def _waiting(self, pods: Sequence[Any]) -> str:
        for pod in pods:
            status = pod.status
            for cs in (status and status.container_statuses) or []:
                waiting = cs.state and cs.state.waiting
                if waiting is not None and waiting.reason:
                    text = self.pending_reasons.get(waiting.reason, waiting.reason)
                    return f"{text}: {waiting.message}" if waiting.message else text
            for cond in (status and status.conditions) or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    text = self.pending_reasons.get(cond.reason or "", cond.reason or "")
                    return f"{text}: {cond.message}" if cond.message else text
        return "waiting for its pod to start"

    def cancel(self, native_ids: Sequence[str]) -> None:
        for name in native_ids:
            try:
                self.api("batch.delete_namespaced_job", name, self.namespace,
                         propagation_policy="Foreground", grace_period_seconds=10)
            except CommandError as e:
                if e.returncode != 404:      # already gone
                    raise

    def hold(self, native_id: str) -> None:
        job = self.api("batch.read_namespaced_job", native_id, self.namespace)
        if job.status is not None and job.status.active and job.status.ready:
            raise ClusterError("kubernetes: only a job whose pod is not running yet can be "
                               "held (suspending a running Job deletes its pod)")
        self.api("batch.patch_namespaced_job", native_id, self.namespace,
                 {"spec": {"suspend": True}})

    def release(self, native_id: str) -> None:
        self.api("batch.patch_namespaced_job", native_id, self.namespace,
                 {"spec": {"suspend": False}})

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        selector = f"{LABEL_MANAGED}=clusterjupyter"
        if not all_users:
            selector += f",{LABEL_USER}={_label_value(self._user())}"
        out = []
        now = time.time()
        for job in self.api("batch.list_namespaced_job", self.namespace,
                            label_selector=selector).items:
            st = self.native(job)
            if st.state.final:
                continue
            started = job.status.start_time if job.status else None
            elapsed = ""
            if started is not None and st.state is _S.RUNNING:
                elapsed = hms(now - started.timestamp())
            meta = job.metadata
            out.append(QueueEntry(native_id=meta.name,
                                  name=(meta.annotations or {}).get("clusterjupyter.io/name",
                                                                    meta.name),
                                  user=(meta.labels or {}).get(LABEL_USER, ""),
                                  state=st.state, native=st.native, reason=st.reason,
                                  elapsed=elapsed, partition=self.namespace))
        return out


class _Condition:
    """A Job condition of our own making (an element of an Indexed Job has none)."""

    def __init__(self, type_: str) -> None:
        self.type, self.status, self.reason, self.message = type_, "True", "", "its pod failed"


def _selector(job_ids: Iterable[str]) -> str:
    """Our jobs with these ids (one set-based selector: one API call for all of them)."""
    ids = sorted({i for i in job_ids if re.fullmatch(r"[A-Za-z0-9_.-]+", i)})
    return f"{LABEL_MANAGED}=clusterjupyter,{LABEL_JOB} in ({','.join(ids)})"


def _api_message(e: Any) -> str:
    try:
        body = json.loads(e.body or "")
        return str(body.get("message") or e.reason)
    except (ValueError, AttributeError):
        return f"{e.reason} {e.body or ''}".strip()
