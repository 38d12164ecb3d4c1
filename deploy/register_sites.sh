#!/usr/bin/env bash
# Register site node keys with the SuperLink (coordinator side), so those SuperNodes may connect.
#
#   deploy/register_sites.sh HOST:PORT CA.crt SITE_KEY.pub [SITE_KEY.pub ...]
#
# Writes the connection "consortium" into $FLWR_HOME/config.toml (TLS with CA.crt) and runs
# `flwr supernode register KEY.pub consortium` per key. Already registered keys are reported by
# flwr and skipped. A SuperNode whose key is not registered is refused by the SuperLink.
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ADDRESS=$1; CA=$2; shift 2
HOME_DIR=${FLWR_HOME:-$HOME/.flwr}
mkdir -p "$HOME_DIR"
CONFIG=$HOME_DIR/config.toml
CA_ABS=$(cd "$(dirname "$CA")" && pwd)/$(basename "$CA")
if ! grep -q '^\[superlink.consortium\]' "$CONFIG" 2>/dev/null; then
  { [[ -s $CONFIG ]] || printf '[superlink]\ndefault = "consortium"\n'
    printf '\n[superlink.consortium]\naddress = "%s"\nroot-certificates = "%s"\n' "$ADDRESS" "$CA_ABS"; } >> "$CONFIG"
fi
status=0
for key in "$@"; do
  name=$(basename "$(dirname "$key")")
  if flwr supernode register "$key" consortium --name "$name"; then :; else status=1; fi
done
flwr supernode list consortium
exit $status
