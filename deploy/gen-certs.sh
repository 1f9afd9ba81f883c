#!/usr/bin/env bash
# Generate the federation's TLS material with openssl: a private CA, the SuperLink's server
# certificate, and (optionally) SuperNode key pairs for hospitals.
#
# Run this ON THE COORDINATOR. Distribute only ca.crt (to every hospital and every `flwr`
# CLI user); ca.key and superlink.key never leave the coordinator (keep ca.key offline).
#
# Usage: deploy/gen-certs.sh [-o OUT_DIR] [-d DAYS] COORDINATOR_HOST [HOSPITAL ...]
#   COORDINATOR_HOST  DNS name or IP the hospitals use to reach the SuperLink; it goes into
#                     the certificate's subjectAltName next to localhost, 127.0.0.1 and
#                     "superlink" (the compose service name).
#   HOSPITAL ...      also generate node keys for these hospitals (for testing, or when the
#                     coordinator provisions keys; otherwise each hospital runs gen-node-key.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/certs"
days=825  # the longest validity current TLS clients accept for a server certificate
usage() { echo "usage: $0 [-o OUT_DIR] [-d DAYS] COORDINATOR_HOST [HOSPITAL ...]" >&2; exit 2; }
while getopts "o:d:h" opt; do
    case $opt in
        o) out=$OPTARG ;;
        d) days=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || usage
host=$1
shift
command -v openssl >/dev/null || { echo "openssl not found: install openssl" >&2; exit 1; }

mkdir -p "$out"
umask 077  # private keys are readable by their owner only

# 1. The CA: signs the SuperLink certificate; hospitals trust exactly this CA.
if [[ ! -e $out/ca.key ]]; then
    openssl ecparam -name secp384r1 -genkey -noout -out "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha384 -days 3650 -subj "/O=privmed/CN=privmed federation CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$out/ca.crt"
else
    echo "$out/ca.key exists; reusing the CA (hospitals keep trusting it)" >&2
fi

# 2. The SuperLink server certificate. Its SANs must name every address clients dial:
#    hospitals use COORDINATOR_HOST; the SuperLink's own ServerApp runtime dials 127.0.0.1.
if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san_host="IP:$host"; else san_host="DNS:$host"; fi
sans="DNS:localhost,IP:127.0.0.1,DNS:superlink"
[[ ,$sans, == *,$san_host,* ]] || sans="$sans,$san_host"
openssl ecparam -name secp384r1 -genkey -noout -out "$out/superlink.key"
openssl req -new -key "$out/superlink.key" -subj "/O=privmed/CN=$host" -out "$out/superlink.csr"
ext=$(mktemp)
trap 'rm -f "$ext"' EXIT
cat > "$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans
EXT
openssl x509 -req -in "$out/superlink.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -sha384 -extfile "$ext" -out "$out/superlink.crt" 2>/dev/null
rm -f "$out/superlink.csr"
chmod 644 "$out/ca.crt" "$out/superlink.crt"
echo "wrote $out/ca.crt, $out/superlink.crt (SAN $sans), $out/superlink.key, $out/ca.key (keep offline)"

# 3. Hospital node keys, when the coordinator provisions them.
for hospital in "$@"; do
    "$here/gen-node-key.sh" "$hospital" "$out"
done
