#!/bin/sh
#$ -N full-options
#$ -S /bin/sh
#$ -j y
#$ -o JOBDIR/scheduler.log
#$ -l h_rt=01:30:00
#$ -pe smp 4
#$ -l h_vmem=1536M
#$ -l gpu=1
#$ -q all.q
#$ -P physics
#$ -l scratch=10G
# clusterjupyter job ID (full-options)

export CLUSTERJUPYTER_SECRET_FILE=SECRET
cd JOBDIR || exit 1
exec PYTHON -m clusterjupyter.runner JOBDIR

