#!/bin/sh
#$ -N analysis-3
#$ -S /bin/sh
#$ -j y
#$ -o /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef/scheduler.log
#$ -l h_rt=01:30:00
#$ -pe mpi 4
#$ -l h_vmem=1536M
#$ -l gpu=1
#$ -q batch
#$ -P proj-7
#$ -l scratch=10G
# clusterjupyter job 0123456789abcdef0123456789abcdef (analysis-3)
module load python/3.11
export OMP_NUM_THREADS=4
export TOKEN_HINT='a b$c'
export CLUSTERJUPYTER_SECRET_FILE=/home/alice/.clusterjupyter/.secret
cd /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef || exit 1
exec /opt/conda/bin/python -m clusterjupyter.runner /home/alice/.clusterjupyter/jobs/0123456789abcdef0123456789abcdef
