#!/bin/sh
#PBS -N full-options
#PBS -j oe
#PBS -o JOBDIR/scheduler.log
#PBS -l walltime=01:30:00
#PBS -l nodes=1:ppn=2:gpus=1:bigmem
#PBS -l mem=3072mb
#PBS -q debug
#PBS -A physics
#PBS -m n
# clusterjupyter job ID (full-options)

export CLUSTERJUPYTER_SECRET_FILE=SECRET
cd JOBDIR || exit 1
exec PYTHON -m clusterjupyter.runner JOBDIR

