#!/bin/sh
#SBATCH --job-name=x___touch__tmp_pwned___id___id___SBATCH_--wrap=id
#SBATCH --output="/home/a b/.cj/jobs/0123456789abcdef0123456789abcdef/scheduler.log"
#SBATCH --error="/home/a b/.cj/jobs/0123456789abcdef0123456789abcdef/scheduler.log"
#SBATCH --constraint=[rack1|rack2]&gpu
# clusterjupyter job 0123456789abcdef0123456789abcdef (x__ touch /tmp/pwned __id_ _id___SBATCH --wrap=id)

export CLUSTERJUPYTER_SECRET_FILE='/home/a b/.cj/.secret'
cd '/home/a b/.cj/jobs/0123456789abcdef0123456789abcdef' || exit 1
exec /opt/conda/bin/python -m clusterjupyter.runner '/home/a b/.cj/jobs/0123456789abcdef0123456789abcdef'
