#!/bin/sh
#SBATCH --job-name=analysis-3
#SBATCH --output=/home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef/scheduler.log
#SBATCH --error=/home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef/scheduler.log
#SBATCH --time=01:30:00
#SBATCH --nodes=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=4096M
#SBATCH --gres=gpu:a100:2
#SBATCH --partition=debug
#SBATCH --account=proj-7
#SBATCH --qos=high
#SBATCH --constraint=intel&avx2
#SBATCH --exclusive
#SBATCH --licenses=matlab:1
# clusterjupyter job 0123456789abcdef0123456789abcdef (analysis-3)
module load python/3.11
source /opt/env.sh
export OMP_NUM_THREADS=4
export TOKEN_HINT='a b$c'
export CLUSTERJUPYTER_SECRET_FILE=/home/alice/.clusterjupyter/.secret
export PYTHONPATH=/home/alice/.clusterjupyter/lib/0011223344556677"${PYTHONPATH:+:$PYTHONPATH}"
cd /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef || exit 1
exec /opt/conda/bin/python -m clusterjupyter.runner /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef
