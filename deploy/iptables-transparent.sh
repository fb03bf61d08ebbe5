#!/usr/bin/env bash
# Transparent interception for Sluice with iptables (for boxes not on nftables; the
# nftables version is nftables-transparent.nft). Web traffic (TCP 80 and 443) arriving
# from the LAN interface is REDIRECTed to Sluice's listener; Sluice reads the original
# destination back with getsockopt(SO_ORIGINAL_DST).
#
#   LAN_IF=eth1 SLUICE_PORT=3128 deploy/iptables-transparent.sh           # add (idempotent)
#   LAN_IF=eth1 SLUICE_PORT=3128 deploy/iptables-transparent.sh --delete  # remove
#   deploy/iptables-transparent.sh --dry-run                              # print the commands
#
# Rules live in their own chains (SLUICE_PRE, SLUICE_OUT in nat; SLUICE_IN in filter),
# flushed and refilled on every run, jumped to once from PREROUTING/OUTPUT/INPUT: running
# it twice is harmless and it never touches other rules. Persist with
# iptables-persistent (`netfilter-persistent save`) after running it.
#
# Variables (environment):
#   LAN_IF       the interface the LAN clients are on              [eth1]
#   SLUICE_PORT  Sluice's listen port                              [3128]
#   SLUICE_USER  the user Sluice runs as; its own connections are
#                never redirected, or they would loop              [sluice]
#   WEB_PORTS    ports to intercept (comma-separated)               [80,443]
#   IPV6         also intercept IPv6 with ip6tables (Sluice must
#                listen on [::]:PORT too): 1 or 0                   [0]
#   LOCAL        also intercept the gateway's own web traffic
#                (OUTPUT chain, all users but SLUICE_USER): 1 or 0 [1]
set -euo pipefail

LAN_IF=${LAN_IF:-eth1}
SLUICE_PORT=${SLUICE_PORT:-3128}
SLUICE_USER=${SLUICE_USER:-sluice}
WEB_PORTS=${WEB_PORTS:-80,443}
IPV6=${IPV6:-0}
LOCAL=${LOCAL:-1}

MODE=add
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --delete) MODE=delete ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "iptables-transparent.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

case "$SLUICE_PORT" in
  ''|*[!0-9]*) echo "iptables-transparent.sh: SLUICE_PORT must be a number, got '$SLUICE_PORT'" >&2; exit 2 ;;
esac
if [ "$DRY_RUN" = 0 ] && ! getent passwd "$SLUICE_USER" >/dev/null; then
  echo "iptables-transparent.sh: no user '$SLUICE_USER' (run deploy/install.sh first, or set SLUICE_USER)" >&2
  exit 1
fi

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# ensure_chain IPT TABLE CHAIN: the chain exists and is empty.
ensure_chain() {
  local ipt=$1 table=$2 chain=$3
  if [ "$DRY_RUN" = 1 ] || ! "$ipt" -t "$table" -n -L "$chain" >/dev/null 2>&1; then
    run "$ipt" -w -t "$table" -N "$chain" || true
  fi
  run "$ipt" -w -t "$table" -F "$chain"
}

# ensure_jump IPT TABLE FROM RULE...: the rule (a jump) is in FROM exactly once.
ensure_jump() {
  local ipt=$1 table=$2 from=$3
  shift 3
  if [ "$DRY_RUN" = 1 ] || ! "$ipt" -w -t "$table" -C "$from" "$@" 2>/dev/null; then
    run "$ipt" -w -t "$table" -I "$from" 1 "$@"
  fi
}

# remove IPT TABLE FROM CHAIN JUMP...: deletes the jump (every copy) and the chain.
remove() {
  local ipt=$1 table=$2 from=$3 chain=$4
  shift 4
  while "$ipt" -w -t "$table" -C "$from" "$@" 2>/dev/null; do
    run "$ipt" -w -t "$table" -D "$from" "$@"
    [ "$DRY_RUN" = 1 ] && break
  done
  if "$ipt" -w -t "$table" -n -L "$chain" >/dev/null 2>&1; then
    run "$ipt" -w -t "$table" -F "$chain"
    run "$ipt" -w -t "$table" -X "$chain"
  fi
}

setup() {
  local ipt=$1
  # nat/PREROUTING: LAN clients' web traffic -> Sluice. Traffic for the gateway's own
  # addresses (its web UI...) is left alone.
  ensure_chain "$ipt" nat SLUICE_PRE
  run "$ipt" -w -t nat -A SLUICE_PRE -m addrtype --dst-type LOCAL -j RETURN
  run "$ipt" -w -t nat -A SLUICE_PRE -p tcp -m multiport --dports "$WEB_PORTS" \
    -j REDIRECT --to-ports "$SLUICE_PORT"
  ensure_jump "$ipt" nat PREROUTING -i "$LAN_IF" -p tcp -j SLUICE_PRE

  # nat/OUTPUT: the gateway's own web traffic, except Sluice's own upstream connections
  # (owner match), which must go straight out.
  if [ "$LOCAL" = 1 ]; then
    ensure_chain "$ipt" nat SLUICE_OUT
    run "$ipt" -w -t nat -A SLUICE_OUT -m owner --uid-owner "$SLUICE_USER" -j RETURN
    run "$ipt" -w -t nat -A SLUICE_OUT -m addrtype --dst-type LOCAL -j RETURN
    run "$ipt" -w -t nat -A SLUICE_OUT -p tcp -m multiport --dports "$WEB_PORTS" \
      -j REDIRECT --to-ports "$SLUICE_PORT"
    ensure_jump "$ipt" nat OUTPUT -p tcp -j SLUICE_OUT
  else
    remove "$ipt" nat OUTPUT SLUICE_OUT -p tcp -j SLUICE_OUT
  fi

  # filter/INPUT: the listener answers the LAN and this box only, never the WAN.
  ensure_chain "$ipt" filter SLUICE_IN
  run "$ipt" -w -t filter -A SLUICE_IN -i lo -j RETURN
  run "$ipt" -w -t filter -A SLUICE_IN -i "$LAN_IF" -j RETURN
  run "$ipt" -w -t filter -A SLUICE_IN -j DROP
  ensure_jump "$ipt" filter INPUT -p tcp --dport "$SLUICE_PORT" -j SLUICE_IN
}

teardown() {
  local ipt=$1
  remove "$ipt" nat PREROUTING SLUICE_PRE -i "$LAN_IF" -p tcp -j SLUICE_PRE
  remove "$ipt" nat OUTPUT SLUICE_OUT -p tcp -j SLUICE_OUT
  remove "$ipt" filter INPUT SLUICE_IN -p tcp --dport "$SLUICE_PORT" -j SLUICE_IN
}

tools=(iptables)
[ "$IPV6" = 1 ] && tools+=(ip6tables)
for ipt in "${tools[@]}"; do
  [ "$DRY_RUN" = 1 ] || command -v "$ipt" >/dev/null 2>&1 || { echo "iptables-transparent.sh: $ipt not found (apt-get install iptables)" >&2; exit 1; }
  if [ "$MODE" = add ]; then
    setup "$ipt"
  else
    teardown "$ipt"
  fi
done
if [ "$MODE" = add ]; then
  echo "iptables-transparent.sh: TCP $WEB_PORTS from $LAN_IF -> :$SLUICE_PORT (user $SLUICE_USER exempt)"
else
  echo "iptables-transparent.sh: rules removed"
fi
