#!/usr/bin/env bash
# bare-debian-check.sh — run testclusters.sh on a bare Debian 12, as CI starts, on this machine.
#
#   scripts/bare-debian-check.sh [ROOT]     (root; default ROOT /var/tmp/cj-bare-debian)
#
# Makes a minimal Debian 12 tree with debootstrap (once; kept in ROOT), copies scripts/ into it
# and, in private pid/net/uts/ipc/mount namespaces (so nothing reaches this machine's own
# daemons, ports or test clusters), runs: install all (with the network), then without it
# start all (cold), start all (again: must be a no-op), status all, a SLURM job, a Grid Engine
# job, an SSH login, restart slurm, stop all; and checks that no daemon is left.  Exit 0 if all
# of it worked.  Remove ROOT to start from bare again.
set -euo pipefail
ROOT=${1:-/var/tmp/cj-bare-debian}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIRROR=${CJ_DEBIAN_MIRROR:-http://deb.debian.org/debian}

[[ $(id -u) == 0 ]] || { echo "bare-debian-check: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
if [[ ! -x $ROOT/usr/bin/apt-get ]]; then
    debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
fi
rm -rf "$ROOT/repo" && mkdir -p "$ROOT/repo" && cp -a "$REPO/scripts" "$ROOT/repo/"
# as on the development and CI machines: package init scripts start nothing; same apt settings
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod 755 "$ROOT/usr/sbin/policy-rc.d"
cp /etc/apt/apt.conf.d/* "$ROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
printf '127.0.0.1 localhost\n127.0.0.1 vm\n' >"$ROOT/etc/hosts"

# in_root NET < SCRIPT: run SCRIPT with bash in ROOT, in new namespaces (NET=1: no network but lo)
in_root() {
    local net=()
    (($1)) && net=(--net)
    # shellcheck disable=SC2016  # expanded by the inner bash
    unshare --pid --uts --ipc --mount "${net[@]}" --fork bash -c '
        set -e
        hostname vm
        if (($2)); then
            ip link set lo up
            # getaddrinfo(AI_ADDRCONFIG), used by slurmdbd, wants one non-loopback address
            ip addr add 10.77.0.1/32 dev lo
        fi
        mount --make-rprivate /
        mount -t proc proc "$1/proc"
        mount --rbind /dev "$1/dev"
        mount --rbind /sys "$1/sys"
        mount -t tmpfs tmpfs "$1/run"
        mount -t tmpfs tmpfs "$1/tmp" && chmod 1777 "$1/tmp"
        exec chroot "$1" /usr/bin/env -i HOME=/root \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -eux -s
    ' _ "$ROOT" "$1"
}

in_root 0 <<'EOF'
cd /repo
time bash scripts/testclusters.sh install all
bash scripts/testclusters.sh install all
EOF
in_root 1 <<'EOF'
cd /repo
time bash scripts/testclusters.sh start all
cat /var/tmp/clusterjupyter-testclusters/clusters.json
again=$(bash scripts/testclusters.sh start all 2>&1)
echo "$again"
[[ $(grep -c "already" <<<"$again") == 4 ]]
bash scripts/testclusters.sh status all
sbatch --wait -o /tmp/slurm.out --wrap "echo slurm-ok"
grep -qx slurm-ok /tmp/slurm.out
(cd /tmp && qsub -sync y -b y -j y -o /tmp/sge.out /bin/echo sge-ok)
grep -qx sge-ok /tmp/sge.out
ssh -F /dev/null -p 2222 -i /var/tmp/clusterjupyter-testclusters/ssh/id_ed25519 \
    -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile=/var/tmp/clusterjupyter-testclusters/ssh/known_hosts root@127.0.0.1 true </dev/null
bash scripts/testclusters.sh restart slurm
time bash scripts/testclusters.sh stop all
left=$(ps -eo stat=,comm= | awk '$1 !~ /^Z/ && $2 !~ /^(bash|ps|awk|env)$/ {print $2}')
[[ -z $left ]] || { echo "still running after stop all: $left"; exit 1; }
EOF
echo "bare-debian-check: ok"
