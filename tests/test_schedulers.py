"""Schedulers without services: parsers on output recorded from the real test clusters
(tests/recorded/, made by tests/recorded/record.sh), state tables, golden job scripts, declared
options, the registry and the shared text helpers. No service marker: the README's no-services
command runs these, in about a second.

Each query of a scheduler is a command builder plus a pure parser; the builders run against the
real schedulers in test_slurm.py, test_sge.py, test_pbs.py and test_scenarios.py.
"""

from __future__ import annotations

import math

import pytest

from clusterjupyter.errors import ClusterError, ProfileError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.resources import Resources, parse_time
from clusterjupyter.schedulers import available, scheduler_class
from clusterjupyter.schedulers.base import (JobSpec, NativeStatus, Scheduler, SchedulerError,
                                            refusal_text)
from clusterjupyter.schedulers.kubernetes import KubernetesScheduler
from clusterjupyter.schedulers.local import LocalScheduler
from clusterjupyter.schedulers.pbs import (PBSScheduler, parse_qstat, parse_qstat_full,
                                           parse_qstat_xml)
from clusterjupyter.schedulers.sge import (SGEScheduler, error_reason, parse_qacct,
                                           parse_qstat_jobs)
from clusterjupyter.schedulers.slurm import (SlurmScheduler, job_name, merged, native_status,
                                             needs_accounting, parse_queue, parse_sacct,
                                             parse_squeue, stderr_path)
from clusterjupyter.states import JobState
from clusterjupyter.text import clock_seconds, dhms, hms, short_duration, signal_name
from clusterjupyter.transports import LocalTransport
from helpers import check_golden, recorded

JOB = "0123456789abcdef0123456789abcdef"
ROOT = "/home/alice/.clusterjupyter"
_S = JobState


# -- SLURM: golden job scripts ------------------------------------------------------------------

def spec(name: str = "analysis-3", root: str = ROOT, **resources: object) -> JobSpec:
    return JobSpec(job_id=JOB, name=name, paths=JobPaths(root, JOB),
                   resources=Resources.parse(resources), python="/opt/conda/bin/python",
                   secret_path=f"{root}/.secret", prelude=[], env={})



def test_golden_defaults():
    check_golden("slurm_defaults.sh", SlurmScheduler(LocalTransport()).render(spec()))


def test_golden_all_options():
    s = spec(time="90m", mem="4G", cpus=4, gpus="a100:2", nodes=1, partition="debug",
             account="proj-7", qos="high", constraint="intel&avx2",
             directives=["--exclusive", "#SBATCH --licenses=matlab:1"])
    s.prelude = ["module load python/3.11", "source /opt/env.sh"]
    s.env = {"OMP_NUM_THREADS": "4", "TOKEN_HINT": "a b$c"}
    s.pythonpath = f"{ROOT}/lib/0011223344556677"
    check_golden("slurm_all_options.sh", SlurmScheduler(LocalTransport()).render(s))


def test_golden_hostile_values_stay_inert():
    s = spec(name='x"; touch /tmp/pwned $(id) `id`\n#SBATCH --wrap=id',
             root="/home/a b/.cj", constraint="[rack1|rack2]&gpu")
    text = SlurmScheduler(LocalTransport()).render(s)
    check_golden("slurm_hostile.sh", text)
    directives = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert directives[0] == "#SBATCH --job-name=x___touch__tmp_pwned___id___id___SBATCH_--wrap=id"
    assert '#SBATCH --output="/home/a b/.cj/jobs/' + JOB + '/scheduler.log"' in directives
    assert not any("--wrap" in d for d in directives[1:])


@pytest.mark.parametrize("cls,extra", [
    (PBSScheduler, {"constraint": "bigmem,ib", "directives": ["-m n"]}),
    (SGEScheduler, {"directives": ["-l scratch=10G"]}),
])
def test_golden_pbs_and_grid_engine_scripts(cls, extra):
    s = spec(time="90m", mem="6G", cpus=4, gpus="1", partition="batch", account="proj-7",
             **extra)
    s.prelude = ["module load python/3.11"]
    s.env = {"OMP_NUM_THREADS": "4", "TOKEN_HINT": "a b$c"}
    check_golden(f"{cls.name}_all_options.sh", cls(LocalTransport(), {"pe": "mpi"}
                                                   if cls is SGEScheduler else {}).render(s))


def test_gpus_style_and_invalid_values():
    sched = SlurmScheduler(LocalTransport(), {"gpu_directive": "gpus"})
    assert "--gpus=2" in sched.directives(spec(gpus="2"))
    assert "--gres=gpu:2" in SlurmScheduler(LocalTransport()).directives(spec(gpus="2"))
    bad = [spec(constraint='a"b'), spec(directives=["--comment=x\n/usr/bin/id"]),
           spec(directives=["id"]), spec(root="/tmp/100%/cj")]
    for s in bad:
        with pytest.raises(ClusterError):
            SlurmScheduler(LocalTransport()).render(s)
    assert job_name("") == "clusterjupyter" and len(job_name("n" * 200)) == 64


def test_state_table_exit_codes_and_reasons():
    s = SlurmScheduler(LocalTransport())
    expect = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending",
              "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running",
              "COMPLETED": "completed", "FAILED": "failed", "NODE_FAIL": "failed",
              "BOOT_FAIL": "failed", "PREEMPTED": "failed", "CANCELLED": "cancelled",
              "CANCELLED+": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout",
              "OUT_OF_MEMORY": "out_of_memory", "SOMETHING_NEW": "running", "": "lost"}
    for word, state in expect.items():
        assert s.map_state(word).value == state, word
    st = native_status("CANCELLED by 1000", "None", "0:15", "vm")
    assert (st.state, st.exit_code, st.reason) == \
        (JobState.CANCELLED, 143, "cancelled by uid 1000; killed by SIGTERM")
    st = native_status("COMPLETING", "TimeLimit", None, "vm")
    assert st.state is JobState.TIMEOUT and "time limit" in st.reason
    st = native_status("PENDING", "Resources", None, "")
    assert st.state is JobState.PENDING and "resources" in st.reason and st.host == ""
    st = native_status("FAILED", "NonZeroExitCode", "3:0", "vm")
    assert (st.state, st.exit_code) == (JobState.FAILED, 3) and "exit code 3" in st.reason
    assert native_status("OUT_OF_MEMORY", "OutOfMemory", "0:125", "vm").reason == \
        "ran out of memory (used more than --mem)"
    assert s.parse_job_id("4242\n") == "4242" and s.parse_job_id("77;cluster2\n") == "77"


def test_submit_once_runs_the_command_once(tmp_path):
    s = SlurmScheduler(LocalTransport())
    counter = tmp_path / "count"
    cmd = ["sh", "-c", f"echo run >> {counter}; echo 4242"]
    first = s.call_once(str(tmp_path), cmd)
    again = s.call_once(str(tmp_path), cmd)     # a retry after a lost connection
    assert first.stdout == again.stdout == "4242\n"
    assert counter.read_text() == "run\n"


# -- SLURM: parsers on recorded output -----------------------------------------------------------
# jobs 20 true, 21 exit 3, 22 sleep (running, then scancel), 23 --time=1 (timeout), 24 --mem=50M
# over its limit, 25 afterok:21 (never), 26 --hold, 27 --begin=now+3600

def test_squeue_status_recorded():
    ids = [str(i) for i in range(20, 28)] + ["99999999"]
    st = parse_squeue(recorded("slurm_squeue_status.txt"), ids)
    assert set(st) == {str(i) for i in range(20, 28)}           # an unknown id is absent
    assert st["20"].state is _S.COMPLETED and st["21"].state is _S.FAILED
    assert (st["22"].state, st["22"].host) == (_S.RUNNING, "vm")
    assert st["24"].state is _S.PENDING and "resources" in st["24"].reason
    assert st["25"].never and "will never start" in st["25"].reason
    assert not st["24"].never and not st["27"].never
    assert st["26"].reason.startswith("held by you") and "start time" in st["27"].reason
    assert needs_accounting(st, ids) == ["20", "21", "99999999"]


def test_sacct_and_merge_recorded():
    ids = [str(i) for i in range(20, 28)]
    finished = parse_squeue(recorded("slurm_squeue_finished.txt"), ids)
    acct = parse_sacct(recorded("slurm_sacct.txt"), ids)
    assert acct["22"].state is _S.CANCELLED and acct["22"].reason == "cancelled by root"
    assert acct["23"].state is _S.TIMEOUT and "time limit" in acct["23"].reason
    assert (acct["24"].state, acct["24"].exit_code) == (_S.FAILED, 137)
    assert acct["24"].reason == "failed; killed by SIGKILL"
    assert acct["21"].exit_code == 3 and "exit code 3" in acct["21"].reason
    assert "depends on failed" in acct["25"].reason
    both = merged(finished, acct)
    assert both["24"].host == "vm" and both["23"].state is _S.TIMEOUT
    # a reused id: the latest submission is the job
    again = "20|FAILED|1:0|None|vm|2026-12-01T09:00:00\n" + recorded("slurm_sacct.txt")
    assert parse_sacct(again, ["20"])["20"].state is _S.FAILED


def test_queue_and_scontrol_recorded():
    entries = {q.native_id: q for q in parse_queue(recorded("slurm_squeue_queue.txt"))}
    assert entries["22"].state is _S.RUNNING and entries["22"].nodes == "vm"
    assert (entries["22"].user, entries["22"].partition, entries["22"].name) == \
        ("root", "debug", "wrap")
    assert entries["26"].state is _S.PENDING and entries["26"].nodes == ""
    assert stderr_path(recorded("slurm_scontrol_oom.txt")) == "/dev/null"
    assert stderr_path("JobId=1 JobState=FAILED") is None


def test_refusals_are_one_line_with_the_command():
    text = refusal_text(["sbatch", "--parsable", "/home/a b/job.sh"], 1, "",
                        recorded("slurm_sbatch_mem.txt").rsplit("exit", 1)[0])
    assert text == ("sbatch: error: Memory specification can not be satisfied; sbatch: error: "
                    "Batch job submission failed: Requested node configuration is not available "
                    "(sbatch --parsable '/home/a b/job.sh', exit code 1)")
    err = SchedulerError(["sbatch", "x"], 1, "", recorded("slurm_sbatch_constraint.txt"), "vm")
    assert "\n" not in str(err) and str(err).startswith("sbatch: error: Batch job submission "
                                                        "failed: Invalid feature specification")
    assert str(err).endswith("(sbatch x, exit code 1, on vm)") and err.returncode == 1


def test_one_call_tolerates_what_it_is_told(tmp_path):
    """Real commands through the real local transport: a tolerated failure is returned, any
    other raises the one-line SchedulerError."""
    s = SlurmScheduler(LocalTransport())
    unknown = recorded("slurm_squeue_unknown.txt").splitlines()[0]
    fail = ["sh", "-c", f"echo '{unknown}' >&2; exit 1"]
    assert s.call(fail, tolerate="Invalid job id").returncode == 1
    assert s.call(fail, tolerate=lambda done: done.returncode == 1).stderr.strip() == unknown
    with pytest.raises(SchedulerError, match=r"Invalid job id specified \(sh -c"):
        s.call(fail, tolerate="something else")
    with pytest.raises(SchedulerError):
        s.call(fail)
    # the submit wrapper's refusal names the command, not the wrapper script
    with pytest.raises(SchedulerError) as info:
        s.call_once(str(tmp_path), ["sh", "-c", "echo 'sbatch: error: no' >&2; exit 1"])
    assert str(info.value).startswith("sbatch: error: no (sh -c ")
    assert "mkdir" not in str(info.value) and "\n" not in str(info.value)


# -- PBS: parsing real Torque / PBS Pro output (what the wrappers cannot print) ---------------

TORQUE_FULL = """\
Job Id: 4127.head.cluster.example.org
    Job_Name = cell-3
    Job_Owner = alice@login1.cluster.example.org
    resources_used.cput = 00:01:02
    resources_used.mem = 10232kb
    resources_used.walltime = 00:10:04
    job_state = C
    queue = batch
    exit_status = 271
    exec_host = node07/3+node07/2
    Resource_List.walltime = 00:10:00
    Variable_List = PBS_O_QUEUE=batch,PBS_O_HOME=/home/alice,PBS_O_LOGNAME=al
\tice,PBS_O_PATH=/usr/bin:/bin
    comp_time = 1763723065

Job Id: 4128.head.cluster.example.org
    Job_Name = cell-4
    Job_Owner = alice@login1.cluster.example.org
    job_state = C
    queue = batch
    exit_status = -10
    Resource_List.walltime = 01:00:00

Job Id: 4129.head.cluster.example.org
    Job_Name = cell-5
    Job_Owner = alice@login1.cluster.example.org
    job_state = H
    queue = batch

Job Id: 4130.head.cluster.example.org
    Job_Name = cell-6
    job_state = C
    exit_status = 143
    resources_used.walltime = 00:00:12
    Resource_List.walltime = 01:00:00
"""

TORQUE_XML = """<Data><Job><Job_Id>77.srv</Job_Id><Job_Name>x</Job_Name>
<job_state>C</job_state><exit_status>0</exit_status><Resource_List><walltime>00:05:00</walltime>
<nodes>1:ppn=2</nodes></Resource_List><exec_host>n1/0</exec_host></Job></Data>"""

PBSPRO_FULL = """\
Job Id: 9001.pbs01
    Job_Name = cell-1
    job_state = F
    Exit_status = -29
    Resource_List.walltime = 00:01:00
    resources_used.walltime = 00:01:03
"""


def test_torque_qstat_full_parsing_and_states():
    sched = PBSScheduler(LocalTransport())
    jobs = {j["job id"]: j for j in parse_qstat_full(TORQUE_FULL)}
    first = jobs["4127.head.cluster.example.org"]
    assert first["variable_list"].endswith("PBS_O_LOGNAME=alice,PBS_O_PATH=/usr/bin:/bin")
    # killed by SIGTERM after the walltime ran out: a timeout, not a cancellation
    st = sched.native(first)
    assert st.state is JobState.TIMEOUT and st.host == "node07"
    st = sched.native(jobs["4128.head.cluster.example.org"])
    assert st.state is JobState.OUT_OF_MEMORY
    st = sched.native(jobs["4129.head.cluster.example.org"])
    assert st.state is JobState.PENDING and "held" in st.reason
    st = sched.native(jobs["4130.head.cluster.example.org"])     # qdel: the runner got TERM
    assert st.state is JobState.CANCELLED and "SIGTERM" in st.reason
    [xml] = parse_qstat_xml(TORQUE_XML)
    assert xml["job id"] == "77.srv" and xml["resource_list.walltime"] == "00:05:00"
    assert sched.native(xml).state is JobState.COMPLETED
    [pro] = parse_qstat_full(PBSPRO_FULL)
    assert sched.native(pro).state is JobState.TIMEOUT


def test_job_ids_and_unsupported_requests():
    sched = PBSScheduler(LocalTransport())
    assert sched.parse_job_id("4127.head.cluster.example.org\n") == \
        "4127.head.cluster.example.org"
    assert sched.parse_job_id("15\n") == "15"
    assert sched.parse_job_id("12[].pbs01\n") == "12[].pbs01"
    assert sched.job_name("3 models; rm -rf ~") == "j3_models__rm_-"
    with pytest.raises(ClusterError, match="count"):
        sched.gpu_count("a100:2")
    with pytest.raises(ClusterError, match="history"):
        PBSScheduler(LocalTransport(), {"history": "sometimes"})
    with pytest.raises(ClusterError, match="command_env"):
        PBSScheduler(LocalTransport(), {"command_env": {"A B": "1"}}).call(["true"])
    sched = PBSScheduler(LocalTransport(), {"bin_dir": "/opt/pbs/bin", "qdel": "/usr/local/qdel"})
    assert sched.command("qsub") == "/opt/pbs/bin/qsub"
    assert sched.command("qdel") == "/usr/local/qdel"


# -- Grid Engine: accounting records and state letters (verbatim qacct output) ----------------

QACCT_TIMEOUT = """\
==============================================================
qname        all.q
hostname     vm
jobnumber    6
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 6s
slots        2
maxvmem      10.305MB
category     -l h_rt=5,h_vmem=500M -pe smp 2
end_time     Sat Nov 21 11:26:28 2026
"""

QACCT_QDEL = """\
==============================================================
jobnumber    7
failed       100 : assumedly after job
exit_status  137                  (Killed)
ru_wallclock 3s
category     -pe smp 2
==============================================================
jobnumber    7
failed       0
exit_status  0
ru_wallclock 1s
"""


def test_accounting_records_and_state_letters():
    sched = SGEScheduler(LocalTransport())
    [rec] = parse_qacct(QACCT_TIMEOUT)
    st = sched.finished(rec)
    assert st.state is JobState.TIMEOUT and st.exit_code == 137
    killed, completed = parse_qacct(QACCT_QDEL)
    assert sched.finished(killed).state is JobState.CANCELLED
    assert sched.finished(completed).state is JobState.COMPLETED
    oom = dict(rec, category="-l h_vmem=10M", maxvmem="10.2M", slots="1", ru_wallclock="1s")
    assert sched.finished(oom).state is JobState.OUT_OF_MEMORY
    never = dict(completed, failed="26  : opening input/output file")
    st = sched.finished(never)
    assert st.state is JobState.FAILED and "input/output file" in st.reason
    table = {"qw": JobState.PENDING, "hqw": JobState.PENDING, "r": JobState.RUNNING,
             "t": JobState.RUNNING, "dr": JobState.RUNNING, "Rr": JobState.RUNNING,
             "s": JobState.RUNNING, "Eqw": JobState.FAILED, "hr": JobState.RUNNING}
    assert {word: sched.map_state(word) for word in table} == table
    assert sched.parse_job_id('Your job 123 ("cell-1") has been submitted\n') == "123"
    assert sched.parse_job_id('Your job-array 9.1-4:1 ("a") has been submitted') == "9"


# -- declared options, commands, registry -------------------------------------------------------

@pytest.mark.parametrize("cls", [SlurmScheduler, PBSScheduler, SGEScheduler, LocalScheduler,
                                 KubernetesScheduler])
def test_an_unknown_option_is_refused_naming_the_valid_ones(cls):
    valid = cls.valid_options()
    with pytest.raises(ClusterError) as info:
        cls(LocalTransport(), {"bin_dri": "/opt/bin", "image": "i", "pvc": "p"}
            if cls is KubernetesScheduler else {"bin_dri": "/opt/bin"})
    text = str(info.value)
    assert text.startswith(f"{cls.name}: unknown scheduler option 'bin_dri'")
    assert all(f"  {name}: " in text for name in valid)
    assert ("did you mean 'bin_dir'?" in text) == ("bin_dir" in valid)


def test_options_declared_per_scheduler():
    assert {"bin_dir", "command_env", "sbatch", "squeue", "sacct", "scancel", "scontrol",
            "accounting", "gpu_directive"} == set(SlurmScheduler.valid_options())
    sge = SGEScheduler.valid_options()
    assert {"qsub", "qstat", "qacct", "qdel", "qhold", "qrls", "pe",
            "gpu_resource", "accounting_wait"} == set(sge) - {"bin_dir", "command_env"}
    # PBS's data is inherited, not its qstat -x history or its PBS Pro arrays
    assert {"history", "arrays"} <= set(PBSScheduler.valid_options())
    assert not {"history", "arrays"} & set(sge)
    assert "qacct" not in PBSScheduler.valid_options() and not LocalScheduler.valid_options()
    assert "image" in KubernetesScheduler.valid_options()
    assert "bin_dir" not in KubernetesScheduler.valid_options()


def test_commands_are_data_resolved_in_one_place():
    slurm = SlurmScheduler(LocalTransport(), {"bin_dir": "/opt/slurm/bin",
                                              "sacct": "/usr/local/bin/sacct"})
    assert slurm.argv("submit", "job.sh") == ["/opt/slurm/bin/sbatch", "--parsable", "job.sh"]
    assert slurm.argv("hold", "7") == ["/opt/slurm/bin/scontrol", "hold", "7"]
    assert slurm.accounting_command(["7"])[0] == "/usr/local/bin/sacct"
    assert slurm.status_command(["7", "8"])[:4] == ["/opt/slurm/bin/squeue", "--noheader",
                                                   "--states=all", "--jobs=7,8"]
    sge = SGEScheduler(LocalTransport(), {"bin_dir": "/usr/lib/gridengine"})
    assert sge.argv("status", "-u", "al") == ["/usr/lib/gridengine/qstat", "-xml", "-u", "al"]
    assert sge.argv("cancel", "5") == ["/usr/lib/gridengine/qdel", "5"]
    assert PBSScheduler(LocalTransport()).status_command(["5"], True) == ["qstat", "-f", "-x",
                                                                          "5"]


def test_one_registry_of_entry_points():
    table = available()
    assert set(table) >= {"local", "slurm", "sge", "pbs", "kubernetes"}
    assert scheduler_class("SLURM") is SlurmScheduler and scheduler_class(" Sge ") is SGEScheduler
    with pytest.raises(ProfileError) as info:
        scheduler_class("lsf")
    assert "unknown scheduler 'lsf'" in str(info.value)
    assert "kubernetes, local, pbs, sge, slurm" in str(info.value)


def test_a_new_scheduler_is_one_small_class(tmp_path):
    """Commands, a state table and one parser: the base does the rest (cancel, hold, errors)."""
    class Toy(Scheduler):
        name = "toy"
        operations = {"submit": ("sh",), "status": ("cat",), "cancel": ("false",)}
        state_map = {"Q": _S.PENDING, "R": _S.RUNNING}
        cancel_gone = "gone"

        def submit(self, spec):
            return self.parse_job_id(self.call(self.argv("submit", "-c", "echo 12")).stdout)

        def status(self, native_ids, job_ids):
            text = self.call(self.argv("status", str(tmp_path / "q"))).stdout
            words = dict(line.split() for line in text.splitlines())
            return {i: NativeStatus(self.map_state(words[i]), native=words[i])
                    for i in native_ids if i in words}

    (tmp_path / "q").write_text("12 R\n")
    toy = Toy(LocalTransport(), {"bin_dir": "/bin"})
    assert toy.submit(None) == "12"
    assert toy.status(["12", "13"], ["x", "y"]) == {"12": NativeStatus(_S.RUNNING, native="R")}
    with pytest.raises(SchedulerError, match=r"\(/bin/false 12, exit code 1, on this machine\)"):
        toy.cancel(["12"])
    with pytest.raises(ClusterError, match="cannot hold"):
        toy.hold("12")


# -- shared text helpers and resources ---------------------------------------------------------

def test_text_helpers():
    assert hms(0) == "00:00:00" and hms(90061) == "25:01:01" and hms(None) == "00:00:00"
    assert dhms(5400) == "01:30:00" and dhms(2 * 86400 + 61) == "2-00:01:01"
    assert short_duration(None) == "-" and short_duration(42) == "42s"
    assert short_duration(185) == "3m05s" and short_duration(7620) == "2h07m"
    assert short_duration(0.42, precise=True) == "0.4s" and short_duration(-3) == "0s"
    assert clock_seconds("00:10:04") == 604 and clock_seconds("6s") == 6
    assert clock_seconds("1:30") == 90 and clock_seconds("") is None
    assert clock_seconds("soon") is None
    assert signal_name(15) == "SIGTERM" and signal_name(99) == "signal 99"


def test_absurd_time_limits_are_refused_with_the_reason():
    assert parse_time("366d") == 366 * 86400 and parse_time("2-00:00:00") == 172800
    for absurd in ("99999999999999999999", "367d", 10 ** 20, math.inf, "9999999:00:00"):
        with pytest.raises(ValueError, match="at most 366 days"):
            parse_time(absurd)
    with pytest.raises(ProfileError, match="at most 366 days"):
        Resources.parse({"time": "99999999999999999999"})


def test_torque_wrappers_recorded():
    """What the slurm-wlm-torque wrappers print (tab-indented, no exit_status, no H state)."""
    sched = PBSScheduler(LocalTransport())
    jobs = {j["job id"]: j for j in parse_qstat(recorded("pbs_qstat_full.txt"))}
    assert set(jobs) == {"43", "44", "45"}
    running, done, queued = (sched.native(jobs[i]) for i in ("43", "44", "45"))
    assert (running.state, running.host, running.native) == (_S.RUNNING, "vm", "R")
    assert done.state is _S.COMPLETED and "without an exit file" in done.reason
    assert queued.state is _S.PENDING and queued.reason == "queued"
    assert sched.parse_job_id(recorded("pbs_qsub.txt")) == "43"
    assert parse_qstat(recorded("pbs_qstat_unknown.txt").rsplit("exit", 1)[0]) == []


def test_grid_engine_recorded():
    """qstat -xml with running, starting, queued and held jobs; qacct records of a job that
    exited 0, one deleted with qdel while running, one killed at its h_rt limit."""
    sched = SGEScheduler(LocalTransport())
    jobs = {j["JB_job_number"]: j for j in parse_qstat_jobs(recorded("sge_qstat_xml.txt"))}
    assert set(jobs) == {"13", "14", "15", "16"}
    running, held, starting, queued = (sched._listed(jobs[i]) for i in ("13", "14", "15", "16"))
    assert (running.state, running.host, running.native) == (_S.RUNNING, "vm", "r")
    assert starting.state is _S.RUNNING and starting.reason == "being started"
    assert held.state is _S.PENDING and held.reason.startswith("held")
    assert queued.state is _S.PENDING and queued.reason == "queued"
    [ok] = parse_qacct(recorded("sge_qacct_ok.txt"))
    assert sched.finished(ok).state is _S.COMPLETED and sched.finished(ok).host == "vm"
    [deleted] = parse_qacct(recorded("sge_qacct_qdel.txt"))
    st = sched.finished(deleted)
    assert st.state is _S.CANCELLED and st.exit_code == 137 and "qdel" in st.reason
    [timeout] = parse_qacct(recorded("sge_qacct_timeout.txt"))
    st = sched.finished(timeout)
    assert st.state is _S.TIMEOUT and "h_rt" in st.reason
    assert parse_qacct(recorded("sge_qacct_unknown.txt")) == []
    assert sched.parse_job_id(recorded("sge_qsub.txt")) == "13"
    assert error_reason("job_number: 9\nerror reason    1:      can't chdir to /nope\n") == \
        "can't chdir to /nope"


def test_pbs_pro_says_when_a_job_can_never_run():
    text = """Job Id: 9002.pbs01
    Job_Name = cell-2
    job_state = Q
    comment = Can Never Run: Insufficient amount of queue resource: ncpus (R: 64 A: 8 T: 8)

Job Id: 9003.pbs01
    job_state = Q
    comment = Not Running: Insufficient amount of resource: ncpus (R: 4 A: 0 T: 8)
"""
    never, waiting = (PBSScheduler(LocalTransport()).native(j) for j in parse_qstat(text))
    assert never.never and never.state is _S.PENDING and "ncpus (R: 64" in never.reason
    assert not waiting.never and waiting.reason == "queued"
