#!/usr/bin/env bash
# A local certificate authority and one certificate per Dask role, for trying scheduler-worker
# TLS (infra/compose.tls.yaml, `dask scheduler --protocol tls`, ...). For local testing: in
# production, certificates come from your own CA.
#
#   infra/make-tls-certs.sh [-f] [OUT_DIR]        (OUT_DIR defaults to infra/tls)
#
# Writes, in OUT_DIR: ca.pem (the CA every side trusts), ca-key.pem, and for each role
# scheduler, worker and client a certificate ROLE.pem and its key ROLE-key.pem. Dask
# authenticates both ends of every connection against the CA, so each certificate is valid for
# server and client use. The scheduler's certificate names dask-scheduler, localhost and
# 127.0.0.1; add names with EXTRA_SANS, e.g. EXTRA_SANS="DNS:gpu1.example.org,IP:10.0.0.5".
# Keys are readable by their owner only; containers read them as the image's user (uid 1000 by
# default), so chown the folder to that uid if yours differs. -f replaces an existing CA.
set -euo pipefail

usage() { echo "usage: $0 [-f] [OUT_DIR]" >&2; exit 2; }

force=0
while getopts "fh" opt; do
    case "$opt" in
        f) force=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ "$#" -le 1 ] || usage

out_dir="${1:-$(cd "$(dirname "$0")" && pwd)/tls}"
days="${CERT_DAYS:-365}"
extra_sans="${EXTRA_SANS:-}"

command -v openssl > /dev/null || { echo "openssl not found" >&2; exit 1; }
if [ -e "$out_dir/ca.pem" ] && [ "$force" -ne 1 ]; then
    echo "$out_dir/ca.pem exists; pass -f to replace the CA and every certificate" >&2
    exit 1
fi
mkdir -p "$out_dir"
umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$out_dir/ca-key.pem" -out "$out_dir/ca.pem" -days "$days" \
    -subj "/CN=lisegagr local Dask CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2> "$work/openssl.log" \
    || { cat "$work/openssl.log" >&2; exit 1; }

issue() {
    local role="$1" sans="$2"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$out_dir/$role-key.pem" -out "$work/$role.csr" \
        -subj "/CN=lisegagr-dask-$role" 2> "$work/openssl.log" \
        || { cat "$work/openssl.log" >&2; exit 1; }
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        echo "subjectAltName=$sans"
    } > "$work/$role.ext"
    openssl x509 -req -in "$work/$role.csr" -CA "$out_dir/ca.pem" -CAkey "$out_dir/ca-key.pem" \
        -CAcreateserial -CAserial "$work/ca.srl" -days "$days" -sha256 \
        -extfile "$work/$role.ext" -out "$out_dir/$role.pem" 2> "$work/openssl.log" \
        || { cat "$work/openssl.log" >&2; exit 1; }
    openssl verify -CAfile "$out_dir/ca.pem" "$out_dir/$role.pem" > /dev/null
}

scheduler_sans="DNS:dask-scheduler,DNS:localhost,IP:127.0.0.1${extra_sans:+,$extra_sans}"
issue scheduler "$scheduler_sans"
issue worker "DNS:dask-worker,DNS:localhost,IP:127.0.0.1${extra_sans:+,$extra_sans}"
issue client "DNS:dask-client,DNS:localhost,IP:127.0.0.1"

chmod 644 "$out_dir"/ca.pem "$out_dir"/scheduler.pem "$out_dir"/worker.pem "$out_dir"/client.pem
chmod 600 "$out_dir"/*-key.pem
echo "CA and certificates for scheduler, worker and client written to $out_dir (valid $days days)"
