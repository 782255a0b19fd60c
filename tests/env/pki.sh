#!/usr/bin/env bash
# Creates the PKI of the test cluster in DIR (default ${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}/pki-v1):
#   ca.crt/ca.key                 the cluster CA (CA:TRUE); signs everything below
#   apiserver.crt/.key            leaf serving certificate (CA:FALSE) for 127.0.0.1 / localhost / kubernetes.default.svc
#   admin.crt/.key                client certificate, O=system:masters
#   controller-manager.crt/.key   client certificate, CN=system:kube-controller-manager
#   scheduler.crt/.key            client certificate, CN=system:kube-scheduler
#   sa.key/sa.pub                 RSA key pair that signs and verifies service-account tokens
# Existing complete output is kept, so a second run costs nothing.
set -euo pipefail

CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"
DIR="${1:-$CACHE/pki-v1}"
if [[ -f "$DIR/.complete" ]]; then
  echo "$DIR"
  exit 0
fi
command -v openssl >/dev/null || { echo "pki.sh: openssl is required (apt-get install openssl)" >&2; exit 1; }

tmp="$(mktemp -d "${DIR%/}.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
DAYS=3650

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$DAYS" \
  -subj "/CN=arrayjob-test-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null

# leaf NAME SUBJECT EXTFILE-CONTENT
leaf() {
  local name="$1" subj="$2" ext="$3"
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
    -days "$DAYS" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

leaf apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
leaf admin "/O=system:masters/CN=arrayjob-admin" "$client_ext"
leaf controller-manager "/CN=system:kube-controller-manager" "$client_ext"
leaf scheduler "/CN=system:kube-scheduler" "$client_ext"

openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
chmod 600 ./*.key
date -u +%FT%TZ >.complete

mkdir -p "$(dirname "$DIR")"
rm -rf "$DIR"
mv "$tmp" "$DIR"
trap - EXIT
echo "$DIR"
