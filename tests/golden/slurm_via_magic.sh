# profile sshslurm (slurm on <USER>@<HOST>:<PORT>)
# inputs: - (0 bytes)
# outputs: -
# working directory: staged, 0 file(s) (0 bytes)
#!/bin/sh
#SBATCH --job-name=golden
#SBATCH --output=<WORK>/ssh/jobs/00000000000000000000000000000000/scheduler.log
#SBATCH --error=<WORK>/ssh/jobs/00000000000000000000000000000000/scheduler.log
#SBATCH --time=01:30:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=2048M
#SBATCH --partition=debug
# clusterjupyter job 00000000000000000000000000000000 (golden)

export CLUSTERJUPYTER_SECRET_FILE=<WORK>/ssh/.secret
export PYTHONPATH=<WORK>/ssh/lib/<DIGEST>"${PYTHONPATH:+:$PYTHONPATH}"
cd <WORK>/ssh/jobs/00000000000000000000000000000000 || exit 1
exec <PYTHON> -m clusterjupyter.runner <WORK>/ssh/jobs/00000000000000000000000000000000

