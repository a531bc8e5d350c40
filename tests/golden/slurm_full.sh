#!/bin/sh
#SBATCH --job-name=full-options
#SBATCH --output=JOBDIR/scheduler.log
#SBATCH --error=JOBDIR/scheduler.log
#SBATCH --time=01:30:00
#SBATCH --nodes=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=3072M
#SBATCH --gres=gpu:1
#SBATCH --partition=debug
#SBATCH --account=physics
#SBATCH --constraint=bigmem
#SBATCH --exclusive
# clusterjupyter job ID (full-options)

export CLUSTERJUPYTER_SECRET_FILE=SECRET
cd JOBDIR || exit 1
exec PYTHON -m clusterjupyter.runner JOBDIR

