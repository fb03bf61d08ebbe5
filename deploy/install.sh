#!/usr/bin/env bash
# Installs Sluice on a Debian gateway: the sluice user, /etc/sluice, /var/lib/sluice/CA,
# the binary, the systemd unit, sysctls, a default config, the CA; then enables the unit.
#
# Idempotent: run it again after `cargo build --release` to upgrade. It never overwrites
# an existing config or CA, and restarts the service only if the binary or the unit
# changed (otherwise it reloads it).
#
#   sudo deploy/install.sh [--dry-run] [options]
#
# Transparent interception rules are not installed here: see deploy/README.md
# (nftables-transparent.nft / iptables-transparent.sh).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: install.sh [options]

  --dry-run           print what would be done, change nothing (no root needed)
  --binary PATH       the sluice binary to install [default: target/release/sluice]
  --listen ADDR       proxy listener for a new config [default: 0.0.0.0:3128]
  --admin ADDR        admin (metrics, health) listener for a new config [default: 127.0.0.1:9090]
  --ca-from DIR       copy ca.pem and ca.key from DIR (the same CA on every gateway)
                      instead of generating one; only when /var/lib/sluice/CA has none
  --no-sysctl         do not install deploy/sysctl.d/90-sluice.conf
  --no-start          enable the unit but do not (re)start it
  -h, --help          this text
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
BINARY="$REPO/target/release/sluice"
LISTEN="0.0.0.0:3128"
ADMIN="127.0.0.1:9090"
CA_FROM=""
SYSCTL=1
START=1

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --binary) BINARY=${2:?--binary needs a path}; shift ;;
    --listen) LISTEN=${2:?--listen needs an address}; shift ;;
    --admin) ADMIN=${2:?--admin needs an address}; shift ;;
    --ca-from) CA_FROM=${2:?--ca-from needs a directory}; shift ;;
    --no-sysctl) SYSCTL=0 ;;
    --no-start) START=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

USER_NAME=sluice
BIN_DST=/usr/local/bin/sluice
CONF_DIR=/etc/sluice
CONF=$CONF_DIR/sluice.toml
STATE_DIR=/var/lib/sluice
CA_DIR=$STATE_DIR/CA
LOG_DIR=/var/log/sluice
UNIT_SRC=$REPO/systemd/sluice.service
UNIT_DST=/etc/systemd/system/sluice.service
SYSCTL_SRC=$REPO/deploy/sysctl.d/90-sluice.conf
SYSCTL_DST=/etc/sysctl.d/90-sluice.conf
DOC_DIR=/usr/local/share/doc/sluice

say() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }

# run CMD...: runs it, or prints it under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# same SRC DST: true if DST exists with the same bytes as SRC.
same() { [ -e "$2" ] && cmp -s "$1" "$2"; }

# put MODE SRC DST: installs SRC as DST (root-owned) unless identical; sets CHANGED=1.
put() {
  local mode=$1 src=$2 dst=$3
  if same "$src" "$dst"; then
    say "$dst is up to date"
  else
    run install -m "$mode" -o root -g root "$src" "$dst"
    CHANGED=1
  fi
}

have_systemd() { [ -d /run/systemd/system ]; }

# --- checks -------------------------------------------------------------------------------

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "must run as root (or try --dry-run)"
fi
if [ ! -x "$BINARY" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    say "note: $BINARY does not exist yet (build it with: cargo build --release)"
  else
    die "$BINARY not found: build it first (cargo build --release) or pass --binary PATH"
  fi
fi
[ -f "$UNIT_SRC" ] || die "$UNIT_SRC not found: run this script from a Sluice checkout"
if [ -n "$CA_FROM" ]; then
  if [ ! -f "$CA_FROM/ca.pem" ] || [ ! -f "$CA_FROM/ca.key" ]; then
    die "--ca-from $CA_FROM: needs ca.pem and ca.key"
  fi
fi

# --- user and folders ---------------------------------------------------------------------

if getent passwd "$USER_NAME" >/dev/null; then
  say "user $USER_NAME exists"
else
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "Sluice proxy" "$USER_NAME"
fi

# The unit's ConfigurationDirectory/StateDirectory/LogsDirectory create these too; doing
# it here lets `ca init` and check-config run before the first start.
run install -d -m 0755 -o root -g root "$CONF_DIR"
run install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR"
run install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$CA_DIR"
run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$LOG_DIR"
run install -d -m 0755 -o root -g root "$DOC_DIR"

# --- binary, unit, docs, sysctls ----------------------------------------------------------

CHANGED=0
if [ -x "$BINARY" ]; then
  put 0755 "$BINARY" "$BIN_DST"
else
  run install -m 0755 -o root -g root "$BINARY" "$BIN_DST"
fi
put 0644 "$UNIT_SRC" "$UNIT_DST"
RESTART_NEEDED=$CHANGED

CHANGED=0
put 0644 "$REPO/systemd/README.md" "$DOC_DIR/systemd.md"
put 0644 "$REPO/deploy/README.md" "$DOC_DIR/deploy.md"

if [ "$SYSCTL" = 1 ]; then
  CHANGED=0
  put 0644 "$SYSCTL_SRC" "$SYSCTL_DST"
  if [ "$CHANGED" = 1 ]; then
    run sysctl -q -p "$SYSCTL_DST"
  fi
fi

# --- config -------------------------------------------------------------------------------

if [ -e "$CONF" ]; then
  say "$CONF exists: left as it is"
else
  config=$(cat <<EOF
# Sluice config, written by deploy/install.sh. Every key is optional; the top-level
# README lists them all. Check changes with: sluice check-config $CONF
# then apply with: systemctl reload sluice

# Explicit proxy clients and REDIRECTed (transparent) traffic arrive here. On a gateway,
# firewall this port from the WAN side (deploy/nftables-transparent.nft does).
listen = ["$LISTEN"]
# Metrics (/metrics) and health (/healthz, /readyz). Use a LAN address for a remote
# Prometheus.
admin = "$ADMIN"
ca_dir = "$CA_DIR"
EOF
)
  if [ "$DRY_RUN" = 1 ]; then
    say "would write $CONF (root:$USER_NAME 0640):"
    printf '%s\n' "$config" | sed 's/^/    /'
  else
    tmp=$(mktemp "$CONF_DIR/.sluice.toml.XXXXXX")
    printf '%s\n' "$config" >"$tmp"
    chown root:"$USER_NAME" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$CONF"
    say "wrote $CONF"
  fi
fi
if [ "$DRY_RUN" = 0 ]; then
  "$BIN_DST" check-config "$CONF" || die "$CONF is not valid: fix it, then rerun"
else
  run "$BIN_DST" check-config "$CONF"
fi

# --- CA -----------------------------------------------------------------------------------

if [ -e "$CA_DIR/ca.pem" ] || [ -e "$CA_DIR/ca.key" ]; then
  say "CA exists in $CA_DIR: left as it is"
elif [ -n "$CA_FROM" ]; then
  say "copying the CA from $CA_FROM"
  run install -m 0644 -o "$USER_NAME" -g "$USER_NAME" "$CA_FROM/ca.pem" "$CA_DIR/ca.pem"
  run install -m 0600 -o "$USER_NAME" -g "$USER_NAME" "$CA_FROM/ca.key" "$CA_DIR/ca.key"
elif [ -x "$BINARY" ] && "$BINARY" ca init --help >/dev/null 2>&1; then
  run runuser -u "$USER_NAME" -- "$BIN_DST" ca init --dir "$CA_DIR"
else
  say "this sluice has no 'ca init': the CA is generated in $CA_DIR on first start"
fi

# --- systemd ------------------------------------------------------------------------------

if ! have_systemd; then
  say "systemd is not running here: unit installed, not enabled or started"
else
  run systemctl daemon-reload
  run systemctl enable sluice.service
  if [ "$START" = 0 ]; then
    say "--no-start: start it with: systemctl start sluice"
  elif systemctl is-active --quiet sluice.service; then
    if [ "$RESTART_NEEDED" = 1 ]; then
      run systemctl restart sluice.service
    else
      run systemctl reload sluice.service
    fi
  else
    run systemctl start sluice.service
  fi
fi

say "done. Clients must trust $CA_DIR/ca.pem for TLS interception."
say "transparent mode: see $DOC_DIR/deploy.md (nftables/iptables REDIRECT rules)."
