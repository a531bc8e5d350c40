#!/bin/sh
#SBATCH --job-name=analysis-3
#SBATCH --output=/home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef/scheduler.log
#SBATCH --error=/home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef/scheduler.log
# clusterjupyter job 0123456789abcdef0123456789abcdef (analysis-3)

export CLUSTERJUPYTER_SECRET_FILE=/home/alice/.clusterjupyter/.secret
cd /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef || exit 1
exec /opt/conda/bin/python -m clusterjupyter.runner /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef
