# shellcheck shell=bash
# A loopback sshd on 127.0.0.1:$SSH_PORT with its own keys (service "sshd").
# Sourced by scripts/testclusters.sh.

SSH_DIR=$STATE/ssh
SSHD_CONFIG=$SSH_DIR/sshd_config
# an unprivileged user who logs in with a password (the tests type it), and a key
# with a passphrase
SSH_PASSWORD_USER=cjpassword
SSHD_PID=$SSH_DIR/sshd.pid
SSHD_LOG=$LOGDIR/sshd.log

sshd_install() { apt_install openssh-server openssh-client; }

# render arguments for $SSHD_CONFIG (templates/sshd_config)
SSHD_CONFIG_ARGS=("$TEMPLATES/sshd_config" PORT="$SSH_PORT" SSH_DIR="$SSH_DIR" PID_FILE="$SSHD_PID"
    PASSWORD_USER="$SSH_PASSWORD_USER")

sshd_keys() {
    mkdir -p "$SSH_DIR"
    chmod 700 "$SSH_DIR"
    local k
    for k in ssh_host_ed25519_key other_host_ed25519_key id_ed25519; do
        [[ -s $SSH_DIR/$k && -s $SSH_DIR/$k.pub ]] && continue
        rm -f "$SSH_DIR/$k" "$SSH_DIR/$k.pub"
        ssh-keygen -q -t ed25519 -N '' -C "clusterjupyter-test-$k" -f "$SSH_DIR/$k"
    done
    # secrets for the password user and the encrypted key, generated once
    local f
    for f in password passphrase; do
        [[ -s $SSH_DIR/$f ]] || (umask 077 && head -c 18 /dev/urandom | base64 >"$SSH_DIR/$f")
    done
    if [[ ! -s $SSH_DIR/id_ed25519_encrypted ]]; then
        rm -f "$SSH_DIR/id_ed25519_encrypted" "$SSH_DIR/id_ed25519_encrypted.pub"
        ssh-keygen -q -t ed25519 -N "$(cat "$SSH_DIR/passphrase")" \
            -C clusterjupyter-test-encrypted -f "$SSH_DIR/id_ed25519_encrypted"
    fi
    id -u "$SSH_PASSWORD_USER" >/dev/null 2>&1 ||
        useradd -m -s /bin/bash "$SSH_PASSWORD_USER" || fail sshd "cannot create user $SSH_PASSWORD_USER"
    echo "$SSH_PASSWORD_USER:$(cat "$SSH_DIR/password")" | chpasswd ||
        fail sshd "cannot set the password of $SSH_PASSWORD_USER"
    cat "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/id_ed25519_encrypted.pub" |
        write_if_changed "$SSH_DIR/authorized_keys" 600 || true
    # known_hosts holds the real host key; known_hosts_other a different key for
    # the same names (a host-key mismatch); known_hosts_empty nothing (unknown host).
    local names="[127.0.0.1]:$SSH_PORT,[localhost]:$SSH_PORT,[$HOST]:$SSH_PORT"
    if ((SSH_PORT == 22)); then names="127.0.0.1,localhost,$HOST"; fi
    echo "$names $(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" |
        write_if_changed "$SSH_DIR/known_hosts" 644 || true
    echo "$names $(cut -d' ' -f1,2 "$SSH_DIR/other_host_ed25519_key.pub")" |
        write_if_changed "$SSH_DIR/known_hosts_other" 644 || true
    : | write_if_changed "$SSH_DIR/known_hosts_empty" 644 || true
}

# sshd_login_ok: a key login with strict host key checking against known_hosts
sshd_login_ok() {
    ssh -F /dev/null -p "$SSH_PORT" -i "$SSH_DIR/id_ed25519" -o IdentitiesOnly=yes \
        -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$SSH_DIR/known_hosts" \
        -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5 root@127.0.0.1 true </dev/null
}

# sshd_banner_ok: the server answers with an SSH banner (a cheap check for the
# fast path; a full key login takes ~0.3 s here, most of it root's .bashrc)
sshd_banner_ok() {
    local line
    line=$(bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && read -r -t 2 l <&3 && echo "$l"' _ "$SSH_PORT" \
        2>/dev/null) || return 1
    [[ $line == SSH-2.0-* ]]
}

sshd_section() {
    set_section ssh "{\"host\": \"127.0.0.1\", \"port\": $SSH_PORT, \"user\": \"root\", \
\"identity_file\": $(json_str "$SSH_DIR/id_ed25519"), \"known_hosts\": $(json_str "$SSH_DIR/known_hosts"), \
\"unknown_host_known_hosts\": $(json_str "$SSH_DIR/known_hosts_other"), \
\"empty_known_hosts\": $(json_str "$SSH_DIR/known_hosts_empty"), \
\"host_public_key\": $(json_str "$SSH_DIR/ssh_host_ed25519_key.pub"), \
\"password_user\": $(json_str "$SSH_PASSWORD_USER"), \"password_file\": $(json_str "$SSH_DIR/password"), \
\"encrypted_identity_file\": $(json_str "$SSH_DIR/id_ed25519_encrypted"), \
\"passphrase_file\": $(json_str "$SSH_DIR/passphrase"), \
\"pid_file\": $(json_str "$SSHD_PID"), \"log\": $(json_str "$SSHD_LOG")}"
}

sshd_start() {
    if conf_current "$SSHD_CONFIG" "${SSHD_CONFIG_ARGS[@]}" &&
        pid_alive "$SSHD_PID" sshd >/dev/null && sshd_banner_ok; then
        say "sshd: already running on 127.0.0.1:$SSH_PORT"
        sshd_section
        return 0
    fi
    sshd_install
    mkdir -p "$LOGDIR"
    sshd_keys
    write_conf "$SSHD_CONFIG" 600 "${SSHD_CONFIG_ARGS[@]}" || true
    # Privilege separation directory, normally made by the init script.
    install -d -m 0755 /run/sshd
    # Only our own sshd (by its pid file) is stopped, never the machine's.
    local pid
    if pid=$(pid_alive "$SSHD_PID" sshd); then stop_pid "$pid"; fi
    rm -f "$SSHD_PID"
    if port_listening "$SSH_PORT"; then
        fail sshd "port $SSH_PORT is taken by another program (set CJ_TEST_SSH_PORT)"
    fi
    /usr/sbin/sshd -t -f "$SSHD_CONFIG" >>"$SSHD_LOG" 2>&1 || fail sshd "bad sshd config" "$SSHD_LOG"
    launch /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG" >>"$LOGDIR/sshd.out" 2>&1 ||
        fail sshd "sshd did not start" "$LOGDIR/sshd.out" "$SSHD_LOG"
    wait_until 10 sshd_login_ok || fail sshd "key login to root@127.0.0.1:$SSH_PORT fails" "$SSHD_LOG"
    # The mismatching known_hosts must really be refused.
    if ssh -F /dev/null -p "$SSH_PORT" -i "$SSH_DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$SSH_DIR/known_hosts_other" \
        -o GlobalKnownHostsFile=/dev/null root@127.0.0.1 true </dev/null >/dev/null 2>&1; then
        fail sshd "login with known_hosts_other was not refused"
    fi
    sshd_section
    say "sshd: running on 127.0.0.1:$SSH_PORT (pid $(pid_alive "$SSHD_PID" sshd))"
}

sshd_stop() {
    local pid
    if pid=$(pid_alive "$SSHD_PID" sshd); then stop_pid "$pid"; fi
    rm -f "$SSHD_PID"
    drop_section ssh
    say "sshd: stopped"
}

# Restart the listening sshd only: sessions already open (their own sshd
# processes) go on, like a real server's restart.
sshd_restart() {
    local pid
    if pid=$(pid_alive "$SSHD_PID" sshd); then stop_pid "$pid"; fi
    rm -f "$SSHD_PID"
    sshd_start
}

sshd_status() {
    if pid_alive "$SSHD_PID" sshd >/dev/null && sshd_login_ok >/dev/null 2>&1; then
        echo "sshd: running on 127.0.0.1:$SSH_PORT, key login ok"
    else
        echo "sshd: NOT working on 127.0.0.1:$SSH_PORT"
        return 1
    fi
}
