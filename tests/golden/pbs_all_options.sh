#!/bin/sh
#PBS -N analysis-3
#PBS -j oe
#PBS -o /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef/scheduler.log
#PBS -l walltime=01:30:00
#PBS -l nodes=1:ppn=4:gpus=1:bigmem:ib
#PBS -l mem=6144mb
#PBS -q batch
#PBS -A proj-7
#PBS -m n
# clusterjupyter job 0123456789abcdef0123456789abcdef (analysis-3)
module load python/3.11
export OMP_NUM_THREADS=4
export TOKEN_HINT='a b$c'
export CLUSTERJUPYTER_SECRET_FILE=/home/alice/.clusterjupyter/.secret
cd /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef || exit 1
exec /opt/conda/bin/python -m clusterjupyter.runner /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef
