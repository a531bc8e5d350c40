#!/bin/sh
#$ -N golden
#$ -S /bin/sh
#$ -j y
#$ -o JOBDIR/scheduler.log
#$ -l h_rt=00:05:00
#$ -pe smp 2
#$ -l h_vmem=512M
#$ -q all.q
# clusterjupyter job ID (golden)

export CLUSTERJUPYTER_SECRET_FILE=SECRET
cd JOBDIR || exit 1
exec PYTHON -m clusterjupyter.runner JOBDIR
