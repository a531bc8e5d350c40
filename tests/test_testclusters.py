"""The test clusters' scripts without starting anything: templates and command line.

``scripts/testclusters/template.sh`` renders the configuration templates of the test clusters
(and Binder's slurm.conf); these tests run it with bash on small templates and on the real ones.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = REPO / "scripts" / "testclusters"
TEMPLATES = PARTS / "templates"


def render(template: Path, *values: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", 'source "$0" && render "$@"', str(PARTS / "template.sh"), str(template),
         *values], capture_output=True, text=True, timeout=30)


def test_render_fills_values_and_keeps_the_chosen_branch(tmp_path):
    t = tmp_path / "t.conf"
    t.write_text("@# a note\nName=@NAME@ (@NAME@)\n@if ON\non\n@else\noff @UNUSED@\n@endif\n"
                 "@if OFF\nnever\n@endif\nhost @allhosts\n")
    done = render(t, "NAME=a b", "ON=1", "OFF=0")
    assert done.returncode == 0, done.stderr
    # the skipped branch needs no value; lower-case @words are left alone
    assert done.stdout == "Name=a b (a b)\non\nhost @allhosts\n"
    other = render(t, "NAME=x", "ON=", "OFF=", "UNUSED=u")
    assert other.stdout == "Name=x (x)\noff u\nhost @allhosts\n"


def test_render_refuses_a_missing_value_and_prints_nothing(tmp_path):
    t = tmp_path / "t.conf"
    t.write_text("A=@A@\nB=@B@\n")
    done = render(t, "A=1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"{t}:2: no value for B" in done.stderr
    t.write_text("@if A\nx\n")
    assert "@if without @endif" in render(t, "A=1").stderr
    assert render(t, "lower=1").returncode == 2


def test_test_cluster_and_binder_share_one_slurm_conf():
    common = ["HOST=vm", "SPOOL=/s", "RUN=/r", "LOG=/l", "CPUS=2", "MEMORY_MB=4000",
              "PARTITION=debug"]
    test = render(TEMPLATES / "slurm.conf", *common, "WRITTEN_BY=t", "CLUSTER=cjtest",
                  "SLURM_USER=root", "SLURMCTLD_PORT=", "SLURMD_PORT=", "MUNGE_SOCKET=",
                  "MEMORY_LIMITS=1", "DEF_MEM_PER_CPU=2000", "ACCOUNTING=1")
    binder = render(TEMPLATES / "slurm.conf", *common, "WRITTEN_BY=b", "CLUSTER=binder",
                    "SLURM_USER=jovyan", "SLURMCTLD_PORT=6917", "SLURMD_PORT=6918",
                    "MUNGE_SOCKET=/m/sock", "MEMORY_LIMITS=0", "ACCOUNTING=0")
    assert test.returncode == binder.returncode == 0, test.stderr + binder.stderr

    def keys(text: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in text.splitlines()
                    if line and not line.startswith(("#", "NodeName", "PartitionName")))

    t, b = keys(test.stdout), keys(binder.stdout)
    assert t["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert t["JobAcctGatherParams"] == "OverMemoryKill" and t["DefMemPerCPU"] == "2000"
    assert "SlurmctldPort" not in t and "AuthInfo" not in t
    assert b["AccountingStorageType"] == "accounting_storage/none"
    assert b["JobAcctGatherType"] == "jobacct_gather/none" and "DefMemPerCPU" not in b
    assert b["SlurmctldPort"] == "6917" and b["SlurmdPort"] == "6918"
    assert b["AuthInfo"] == "socket=/m/sock"
    assert b["SlurmUser"] == "jovyan" and t["SlurmUser"] == "root"
    # everything else is the same file
    differ = {k for k in t.keys() | b.keys() if t.get(k) != b.get(k)}
    assert differ == {"ClusterName", "SlurmUser", "SlurmdUser", "SelectTypeParameters",
                      "DefMemPerCPU", "JobAcctGatherType", "JobAcctGatherFrequency",
                      "JobAcctGatherParams", "AccountingStorageType", "AccountingStorageHost",
                      "SlurmctldPort", "SlurmdPort", "AuthInfo"}
    assert "NodeName=vm NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN" in binder.stdout


def test_command_line_names_the_valid_commands_and_services():
    script = str(REPO / "scripts" / "testclusters.sh")
    usage = subprocess.run(["bash", script], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2
    assert "testclusters.sh start   [all|slurm|sshd|sge|pbs]" in usage.stderr
    bad = subprocess.run(["bash", script, "status", "nosuch"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2
    assert "unknown service 'nosuch' (use: all slurm sshd sge pbs)" in bad.stderr
