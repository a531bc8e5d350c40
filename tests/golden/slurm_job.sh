#!/bin/sh
#SBATCH --job-name=golden
#SBATCH --output=JOBDIR/scheduler.log
#SBATCH --error=JOBDIR/scheduler.log
#SBATCH --time=00:05:00
#SBATCH --cpus-per-task=1
#SBATCH --mem=300M
#SBATCH --partition=debug
# clusterjupyter job ID (golden)

export CLUSTERJUPYTER_SECRET_FILE=SECRET
cd JOBDIR || exit 1
exec PYTHON -m clusterjupyter.runner JOBDIR
