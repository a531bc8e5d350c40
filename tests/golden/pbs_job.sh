#!/bin/sh
#PBS -N golden
#PBS -j oe
#PBS -o JOBDIR/scheduler.log
#PBS -l walltime=00:05:00
#PBS -l nodes=1:ppn=1
#PBS -l mem=300mb
# clusterjupyter job ID (golden)

export CLUSTERJUPYTER_SECRET_FILE=SECRET
cd JOBDIR || exit 1
exec PYTHON -m clusterjupyter.runner JOBDIR
