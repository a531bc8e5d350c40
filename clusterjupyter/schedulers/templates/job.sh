#!/bin/sh
{directives}
# clusterjupyter job {job_id} ({name})
{prelude}
{exports}
cd {job_dir} || exit 1
exec {wrap}{python} -m clusterjupyter.runner {job_dir}
