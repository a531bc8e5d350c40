# shellcheck shell=bash
# Accounting for the test SLURM: MariaDB and slurmdbd (part of service "slurm").
# Sourced by scripts/testclusters.sh; slurm.sh starts these before slurmctld.

SLURMDBD_CONF_FILE=/etc/slurm/slurmdbd.conf
SLURM_DB=slurm_acct_db
SLURM_DB_USER=slurm
SLURM_DB_PASS=cj-test-only # a throwaway database on a test machine
MARIADB_LOG=$LOGDIR/mariadb.log

# installed together with SLURM (slurm_install)
ACCOUNTING_PACKAGES=(slurmdbd mariadb-server mariadb-client)

# slurmdbd.conf as it must be (templates/slurmdbd.conf)
SLURMDBD_CONF_ARGS=("$TEMPLATES/slurmdbd.conf" LOG="$LOGDIR" RUN="$RUNDIR"
    DB="$SLURM_DB" DB_USER="$SLURM_DB_USER" DB_PASS="$SLURM_DB_PASS")

mariadb_ok() { mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1; }

mariadb_start() {
    if ! mariadb_ok; then
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql >>"$MARIADB_LOG" 2>&1 ||
                fail slurm "mariadb-install-db failed" "$MARIADB_LOG"
        fi
        stop_daemon /run/mysqld/mysqld.pid mariadbd
        touch "$MARIADB_LOG"
        chown mysql:mysql "$MARIADB_LOG"
        launch start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
            --user=mysql --log-error="$MARIADB_LOG" ||
            fail slurm "mariadbd did not start" "$MARIADB_LOG"
        wait_until 60 mariadb_ok || fail slurm "MariaDB does not answer" "$MARIADB_LOG"
    fi
    # Root logs in through the unix socket; the slurm user is for slurmdbd.
    mariadb <<EOF || fail slurm "could not create the accounting database" "$MARIADB_LOG"
CREATE DATABASE IF NOT EXISTS $SLURM_DB;
CREATE USER IF NOT EXISTS '$SLURM_DB_USER'@'localhost' IDENTIFIED BY '$SLURM_DB_PASS';
GRANT ALL ON $SLURM_DB.* TO '$SLURM_DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

slurmdbd_ok() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

slurmdbd_start() {
    if pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd >/dev/null && slurmdbd_ok; then
        return 0
    fi
    stop_daemon "$RUNDIR/slurmdbd.pid" slurmdbd
    launch /usr/sbin/slurmdbd >>"$LOGDIR/slurmdbd.out" 2>&1 ||
        fail slurm "slurmdbd did not start" "$LOGDIR/slurmdbd.out" "$LOGDIR/slurmdbd.log"
    wait_until 30 slurmdbd_ok || fail slurm "slurmdbd does not answer" "$LOGDIR/slurmdbd.log"
}


accounting_alive() {
    mariadb_ok && pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd >/dev/null
}

accounting_stop() {
    stop_daemon "$RUNDIR/slurmdbd.pid" slurmdbd
    if mariadb_ok; then
        mariadb-admin shutdown >/dev/null 2>&1 || stop_daemon /run/mysqld/mysqld.pid mariadbd
    fi
}
