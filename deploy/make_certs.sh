#!/usr/bin/env bash
# Create the consortium's TLS material and one SuperNode key pair per site.
#
#   deploy/make_certs.sh OUT_DIR [--host superlink.example.org] [--sites "uk-nord klinikum-sued ..."] [--days 825]
#
# Writes (existing files are kept, so re-running never rotates a key by accident):
#   OUT_DIR/ca.crt, ca.key                 the consortium CA (keep ca.key offline; sites need only ca.crt)
#   OUT_DIR/superlink.crt, superlink.key   the SuperLink's server certificate, SAN 127.0.0.1, ::1,
#                                          localhost and every --host given
#   OUT_DIR/sites/<site>/node_key(.pub)    one ECDSA P-384 key pair per site (ssh-keygen -t ecdsa -b 384);
#                                          the private key stays at the site, the .pub goes to the coordinator
# Registration of the public keys is a separate step on the coordinator (see deploy/register_sites.sh):
#   flwr supernode register OUT_DIR/sites/<site>/node_key.pub <connection>
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[[ $# -ge 1 ]] || usage
OUT=$1; shift
HOSTS=()
SITES="site-1 site-2 site-3"
DAYS=825
while [[ $# -gt 0 ]]; do
  case $1 in
    --host) HOSTS+=("$2"); shift 2 ;;
    --sites) SITES=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done

command -v openssl >/dev/null || { echo "openssl not found: install it (apt-get install openssl)" >&2; exit 1; }
command -v ssh-keygen >/dev/null || { echo "ssh-keygen not found: install openssh-client" >&2; exit 1; }
mkdir -p "$OUT/sites"
umask 077

if [[ ! -f $OUT/ca.key ]]; then
  openssl req -x509 -new -newkey rsa:4096 -nodes -sha256 -days "$DAYS" \
    -keyout "$OUT/ca.key" -out "$OUT/ca.crt" -subj "/O=fedcohort consortium/CN=fedcohort consortium CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "created consortium CA: $OUT/ca.crt"
fi

if [[ ! -f $OUT/superlink.key ]]; then
  san="DNS:localhost,IP:127.0.0.1,IP:::1"
  for h in "${HOSTS[@]}"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+=",IP:$h"; else san+=",DNS:$h"; fi
  done
  cn=${HOSTS[0]:-localhost}
  ext=$(mktemp); trap 'rm -f "$ext" "$OUT/superlink.csr"' EXIT
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > "$ext"
  openssl req -new -newkey rsa:4096 -nodes -keyout "$OUT/superlink.key" -out "$OUT/superlink.csr" \
    -subj "/O=fedcohort consortium/CN=$cn" 2>/dev/null
  openssl x509 -req -in "$OUT/superlink.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
    -out "$OUT/superlink.crt" -days "$DAYS" -sha256 -extfile "$ext" 2>/dev/null
  echo "created SuperLink certificate: $OUT/superlink.crt ($san)"
fi

for site in $SITES; do
  mkdir -p "$OUT/sites/$site"
  if [[ ! -f $OUT/sites/$site/node_key ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedcohort-$site" -f "$OUT/sites/$site/node_key"
    echo "created node key pair for $site: $OUT/sites/$site/node_key(.pub)"
  fi
done
chmod 644 "$OUT/ca.crt" "$OUT/superlink.crt" "$OUT"/sites/*/node_key.pub
