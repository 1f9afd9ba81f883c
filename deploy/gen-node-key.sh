#!/usr/bin/env bash
# Generate one hospital's SuperNode key pair (ECDSA P-384, OpenSSH format, as flwr expects).
#
# Run this AT THE HOSPITAL: the private key never leaves it. Send only the .pub file to the
# coordinator admin, who registers it with `flwr supernode register`.
#
# Usage: deploy/gen-node-key.sh HOSPITAL [OUT_DIR]
#   writes OUT_DIR/HOSPITAL/node_key (private, mode 600) and node_key.pub (default OUT_DIR: deploy/certs)
set -euo pipefail

usage() { echo "usage: $0 HOSPITAL [OUT_DIR]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
out=${2:-"$(dirname "$0")/certs"}
# The name becomes a directory and a key comment: keep it to what a site name may be.
[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "hospital name must match [A-Za-z0-9_-]+, got '$name'" >&2; exit 2; }
command -v ssh-keygen >/dev/null || { echo "ssh-keygen not found: install openssh-client" >&2; exit 1; }

dir="$out/$name"
if [[ -e $dir/node_key ]]; then
    # Never overwrite: a registered key that changes silently locks the hospital out.
    echo "$dir/node_key exists; keeping it (delete it first to rotate the key)" >&2
    exit 0
fi
mkdir -p "$dir"
# flwr loads the private key with cryptography's load_ssh_private_key (OpenSSH format, no
# passphrase) and accepts NIST EC curves only; P-384 is what its guide uses.
ssh-keygen -q -t ecdsa -b 384 -N "" -C "privmed-$name" -f "$dir/node_key"
chmod 600 "$dir/node_key"
chmod 644 "$dir/node_key.pub"
echo "wrote $dir/node_key (keep private) and $dir/node_key.pub (send to the coordinator)"
