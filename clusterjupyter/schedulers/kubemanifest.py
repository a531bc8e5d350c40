"""The Kubernetes Job manifests, as pure functions of the profile's options and a job's spec:
one ``batch/v1`` Job per cell, one Indexed Job per sweep (see :mod:`.kubernetes`, which talks to
the API server with them). Kept apart so what is sent can be built and checked without a client.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ClusterError
from ..jobdir import SECRET_ENV
from ..resources import Resources
from ..sweep import array_ranges
from .base import JobSpec

LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_JOB = "clusterjupyter.io/job"
LABEL_USER = "clusterjupyter.io/user"
SECRET_DIR = "/var/run/clusterjupyter"

#: the pod's command: key from the Secret into a private in-memory file, prelude, runner
_ENTRY = ('umask 077 && printf "%s" "$CLUSTERJUPYTER_SECRET" > {dir}/secret && '
          'unset CLUSTERJUPYTER_SECRET && export {env}={dir}/secret || exit 70\n'
          '{prelude}exec "$@"')
#: a sweep's pod: its element from JOB_COMPLETION_INDEX (the CJ_INDICES word of that position
#: when the Job runs only some elements), then the element's directory (CJ_ARRAY_BASE + index)
ELEMENT = ('i=${JOB_COMPLETION_INDEX:?not an Indexed Job}\n'
           'if [ -n "${CJ_INDICES:-}" ]; then '
           'i=$(printf "%s\\n" $CJ_INDICES | sed -n "$((i + 1))p"); fi\n'
           'case $i in ""|*[!0-9]*) echo "no element for completion index'
           ' $JOB_COMPLETION_INDEX" >&2; exit 71;; esac\n'
           'CJ_JOB_DIR="$CJ_ARRAY_BASE$(printf %08d "$i")" && cd "$CJ_JOB_DIR" || exit 71\n')
#: annotation of a sweep's Job: the element index of each completion index (array_ranges)
ANNOTATION_INDICES = "clusterjupyter.io/indices"


@dataclass(frozen=True)
class Site:
    """What a manifest needs besides the job: the profile's options, the user, the namespace
    and the Secret holding the key."""

    options: Mapping[str, Any]
    user: str
    namespace: str
    secret_name: str


# -- the manifests ---------------------------------------------------------------------------
def job_manifest(site: Site, spec: JobSpec) -> dict[str, Any]:
    """The ``batch/v1`` Job: one pod, never restarted, deadline from ``--time``."""
    labels = {LABEL_MANAGED: "clusterjupyter", LABEL_JOB: spec.job_id,
              LABEL_USER: _label_value(site.user)}
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,                       # a cell runs at most once
        "ttlSecondsAfterFinished": int(site.options.get("ttl_seconds", 3600)),
        "template": {"metadata": {"labels": labels}, "spec": pod(site, spec)},
    }
    if spec.resources.time and not spec.array_prefix:
        job_spec["activeDeadlineSeconds"] = int(spec.resources.time)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(spec.job_id), "namespace": site.namespace,
                     "labels": labels,
                     "annotations": {"clusterjupyter.io/name": spec.name,
                                     "clusterjupyter.io/job-dir": spec.paths.dir}},
        "spec": job_spec,
    }


def indexed_job(site: Site, spec: JobSpec, indices: Sequence[int],
                max_running: int) -> dict[str, Any]:
    """A sweep's Indexed Job: one completion index per element of ``indices`` (in
    order), each run once, at most ``max_running`` at a time (0: all), ``--time`` for each
    element's pod."""
    if not spec.array_prefix:
        raise ClusterError("kubernetes: an Indexed Job needs the sweep's element prefix")
    m = job_manifest(site, spec)
    job_spec = m["spec"]
    del job_spec["backoffLimit"]                 # per index instead: a failure stops no other
    job_spec.update({"completionMode": "Indexed", "completions": len(indices),
                     "parallelism": int(max_running) if max_running else len(indices),
                     "backoffLimitPerIndex": 0, "maxFailedIndexes": len(indices)})
    pod = job_spec["template"]["spec"]
    if spec.resources.time:
        pod["activeDeadlineSeconds"] = int(spec.resources.time)
    ordered = list(indices)
    m["metadata"]["annotations"][ANNOTATION_INDICES] = array_ranges(ordered) \
        if ordered == sorted(set(ordered)) else ",".join(map(str, ordered))
    env = pod["containers"][0]["env"]
    base = posixpath.join(spec.paths.root, "jobs", spec.array_prefix)
    env.append({"name": "CJ_ARRAY_BASE", "value": base})
    if ordered != list(range(len(ordered))):
        env.append({"name": "CJ_INDICES", "value": " ".join(map(str, ordered))})
    return m


def amounts(options: Mapping[str, Any], res: Resources) -> dict[str, str]:
    """Container requests (= limits) for ``res``; what Kubernetes cannot express is
    refused, naming the profile option to use instead."""
    for what in ("nodes", "partition", "account", "qos", "constraint"):
        if getattr(res, what) and not (what == "nodes" and res.nodes == 1):
            raise ClusterError(f"kubernetes: --{what} has no Kubernetes equivalent here; "
                               "use the profile's scheduler options (namespace, "
                               "node_selector …)")
    if res.directives:
        raise ClusterError("kubernetes: --directive is not taken; use the profile's "
                           "scheduler options")
    amounts: dict[str, str] = {}
    if res.cpus:
        amounts["cpu"] = str(int(res.cpus))
    if res.mem:
        amounts["memory"] = f"{int(res.mem)}Mi"
    if res.gpus:
        if not res.gpus.isdigit():
            raise ClusterError(f"kubernetes: --gpus takes a count, not {res.gpus!r}; "
                               "choose the GPU type with the node_selector option")
        amounts[str(options.get("gpu_resource", "nvidia.com/gpu"))] = res.gpus
    return amounts


def container(site: Site, spec: JobSpec) -> dict[str, Any]:
    """The runner's container: the key from the Secret, the prelude, then the runner."""
    env: list[dict[str, Any]] = [{"name": "CLUSTERJUPYTER_SECRET", "valueFrom": {
        "secretKeyRef": {"name": site.secret_name, "key": "secret"}}}]
    env += [{"name": key, "value": value} for key, value in spec.env.items()]
    if spec.pythonpath:
        env.append({"name": "PYTHONPATH", "value": spec.pythonpath})
    prelude = "".join(f"{line}\n" for line in spec.prelude)
    python = shlex.split(str(site.options.get("python", "python3")))
    sub_path = site.options.get("pvc_sub_path")
    entry = _ENTRY.format(dir=SECRET_DIR, env=SECRET_ENV, prelude=prelude)
    job_dir = [spec.paths.dir]
    if spec.array_prefix:          # the element's directory is known in the pod only
        entry = ELEMENT + entry.replace('exec "$@"', 'exec "$@" "$CJ_JOB_DIR"')
        job_dir = []
    container: dict[str, Any] = {
        "name": "cell",
        "image": str(site.options["image"]),
        "command": ["/bin/sh", "-c", entry, "sh",
                    *python, "-m", "clusterjupyter.runner", *job_dir],
        "workingDir": spec.paths.root if spec.array_prefix else spec.paths.dir,
        "env": env,
        "volumeMounts": [
            {"name": "work", "mountPath": spec.paths.root,
             **({"subPath": str(sub_path)} if sub_path else {})},
            {"name": "secret", "mountPath": SECRET_DIR}],
    }
    sized = amounts(site.options, spec.resources)
    if sized:
        container["resources"] = {"requests": dict(sized), "limits": dict(sized)}
    if site.options.get("image_pull_policy"):
        container["imagePullPolicy"] = str(site.options["image_pull_policy"])
    return container


def pod(site: Site, spec: JobSpec) -> dict[str, Any]:
    """The pod: the container, the user it runs as, the work claim and the key's memory
    volume."""
    uid = site.options.get("run_as_user", os.getuid())
    gid = site.options.get("run_as_group", os.getgid())
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container(site, spec)],
        "securityContext": {"runAsUser": int(uid), "runAsGroup": int(gid)},
        "volumes": [
            {"name": "work", "persistentVolumeClaim": {"claimName": str(site.options["pvc"])}},
            {"name": "secret", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
    }
    if site.options.get("service_account"):
        pod["serviceAccountName"] = str(site.options["service_account"])
    if site.options.get("node_selector"):
        pod["nodeSelector"] = {str(k): str(v) for k, v in
                               dict(site.options["node_selector"]).items()}
    return pod


def job_name(job_id: str) -> str:
    """The Job's name: a DNS label made from our job id."""
    return f"cj-{job_id}"[:63]


def _label_value(text: str) -> str:
    """A valid label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63].strip("_.-")
    return value or "unknown"
