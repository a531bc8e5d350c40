#!/bin/bash
# Record real scheduler output for the parser tests (tests/test_scheduler_parsers.py).
# Run on a machine where scripts/testclusters.sh started slurm, sge and pbs:
#   bash tests/recorded/record.sh [slurm|sge|pbs ...]
# Each file holds what one command printed; review the diff before committing.
set -u
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); chmod 755 "$tmp"; cd "$tmp"
info=/var/tmp/clusterjupyter-testclusters/clusters.json
pbs_bin=$(python3 -c "import json;print(json.load(open('$info'))['pbs']['bin_dir'])")
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
sge=/usr/lib/gridengine
wait_gone() { for _ in $(seq 1 600); do [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return; sleep 0.5; done; }
wait_running() { for _ in $(seq 1 600); do [ "$(squeue -h -o %T -j "$1")" = RUNNING ] && return; sleep 0.5; done; }
SQ="--noheader --states=all --format=%i|%T|%r|%N"
SA="-X -n -P --format=JobID,State,ExitCode,Reason,NodeList,Submit"

record_slurm() {
  sb() { sbatch --parsable --partition=debug --output=/dev/null --mem=100M "$@" | cut -d';' -f1; }
  ok=$(sb --wrap true); bad=$(sb --wrap 'exit 3'); long=$(sb --time=10 --wrap 'sleep 300')
  tmo=$(sb --time=1 --wrap 'sleep 300')
  oom=$(sb --mem=50M --wrap "python3 -c 'b=bytearray(400<<20); [b.__setitem__(i,1) for i in range(0,len(b),4096)]; import time; time.sleep(20)'")
  wait_gone "$bad"
  never=$(sb --dependency=afterok:"$bad" --wrap true); held=$(sb --hold --wrap true)
  later=$(sb --begin=now+3600 --wrap true)
  wait_running "$long"; sleep 2
  squeue $SQ --jobs="$ok,$bad,$long,$tmo,$oom,$never,$held,$later,99999999" > "$here/slurm_squeue_status.txt" 2>&1
  squeue --noheader --me --format='%i|%u|%T|%r|%M|%P|%N|%j' > "$here/slurm_squeue_queue.txt"
  scancel "$long"; wait_gone "$long"; wait_gone "$oom"
  scontrol show job -o "$oom" > "$here/slurm_scontrol_oom.txt" 2>&1
  wait_gone "$tmo"; sleep 3
  scancel "$never" "$held" "$later"; sleep 2
  squeue $SQ --jobs="$ok,$bad,$long,$tmo,$oom,$never,$held,$later" > "$here/slurm_squeue_finished.txt" 2>&1
  sacct $SA -j "$ok,$bad,$long,$tmo,$oom,$never,$held,$later" > "$here/slurm_sacct.txt" 2>&1
  squeue $SQ --jobs=99999999 > "$here/slurm_squeue_unknown.txt" 2>&1; echo "exit $?" >> "$here/slurm_squeue_unknown.txt"
  scancel 99999999 > "$here/slurm_scancel_unknown.txt" 2>&1; echo "exit $?" >> "$here/slurm_scancel_unknown.txt"
  sbatch --parsable --partition=debug --mem=99999999T --wrap true > "$here/slurm_sbatch_mem.txt" 2>&1
  echo "exit $?" >> "$here/slurm_sbatch_mem.txt"
  sbatch --parsable --partition=debug --constraint=nosuchfeature --wrap true > "$here/slurm_sbatch_constraint.txt" 2>&1
  echo "exit $?" >> "$here/slurm_sbatch_constraint.txt"
}

record_pbs() {
  q() { "$pbs_bin/$1" "${@:2}"; }
  printf '#!/bin/sh\n#PBS -l walltime=00:10:00\n#PBS -l mem=100mb\nsleep 300\n' > long.sh
  printf '#!/bin/sh\n#PBS -l mem=100mb\ntrue\n' > ok.sh
  long=$(q qsub -o /dev/null long.sh | tr -d '[:space:]'); ok=$(q qsub -o /dev/null ok.sh | tr -d '[:space:]')
  held=$(q qsub -h -o /dev/null ok.sh | tr -d '[:space:]')
  echo "$long" > "$here/pbs_qsub.txt"
  wait_running "$long"; wait_gone "$ok"; sleep 1
  q qstat -f "$long" "$ok" "$held" > "$here/pbs_qstat_full.txt" 2>&1
  q qstat -f -x "$long" > "$here/pbs_qstat_x_refused.txt" 2>&1; echo "exit $?" >> "$here/pbs_qstat_x_refused.txt"
  q qstat -f 99999999 > "$here/pbs_qstat_unknown.txt" 2>&1; echo "exit $?" >> "$here/pbs_qstat_unknown.txt"
  q qdel "$long" "$held"
  q qdel 99999999 > "$here/pbs_qdel_unknown.txt" 2>&1; echo "exit $?" >> "$here/pbs_qdel_unknown.txt"
}

record_sge() {
  user=sgetest; id "$user" >/dev/null 2>&1 || user=$(id -un)
  s() { "$sge/qsub" -S /bin/sh -j y -o /dev/null -q all.q "$@"; }
  printf 'sleep 300\n' > long.sh; printf 'exit 0\n' > ok.sh; printf 'sleep 300\n' > tmo.sh
  long=$(s -N long long.sh | awk '{print $3}'); held=$(s -h -N held ok.sh | awk '{print $3}')
  ok=$(s -N ok ok.sh | awk '{print $3}'); tmo=$(s -N tmo -l h_rt=5 tmo.sh | awk '{print $3}')
  echo "Your job $long (\"long\") has been submitted" > "$here/sge_qsub.txt"
  for _ in $(seq 1 120); do "$sge/qstat" -xml -u '*' | grep -q "<state>r</state>" && break; sleep 1; done
  "$sge/qstat" -xml -u '*' > "$here/sge_qstat_xml.txt"
  "$sge/qdel" "$long" "$held" >/dev/null
  for _ in $(seq 1 120); do "$sge/qacct" -j "$tmo" >/dev/null 2>&1 && "$sge/qacct" -j "$long" >/dev/null 2>&1 && "$sge/qacct" -j "$ok" >/dev/null 2>&1 && break; sleep 1; done
  "$sge/qacct" -j "$ok" > "$here/sge_qacct_ok.txt" 2>&1
  "$sge/qacct" -j "$long" > "$here/sge_qacct_qdel.txt" 2>&1
  "$sge/qacct" -j "$tmo" > "$here/sge_qacct_timeout.txt" 2>&1
  "$sge/qacct" -j 99999999 > "$here/sge_qacct_unknown.txt" 2>&1; echo "exit $?" >> "$here/sge_qacct_unknown.txt"
}

for what in "${@:-slurm pbs sge}"; do for w in $what; do "record_$w"; done; done
rm -rf "$tmp"
