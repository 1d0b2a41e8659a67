#!/usr/bin/env bash
# Makes the test certificates in this directory (run once; the output is committed).
# Two CAs, each with one leaf certificate valid for gatehouse.test, localhost and
# 127.0.0.1, usable by servers and clients, valid from 2025 to 2125 (so a test machine
# whose clock is off by a while still accepts them). For tests only: the keys are public.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/ca.cnf" <<CNF
[ca]
default_ca = ca_default
[ca_default]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:gatehouse.test, DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
CNF
dates=(-startdate 20250101000000Z -enddate 21250101000000Z)
for name in test other; do
  : > "$tmp/index.txt"
  echo 01 > "$tmp/serial"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$tmp/$name-ca-key.pem" -out "$tmp/$name-ca.csr" -subj "/CN=gatehouse $name CA"
  openssl ca -batch -notext -config "$tmp/ca.cnf" -selfsign -keyfile "$tmp/$name-ca-key.pem" \
    -in "$tmp/$name-ca.csr" -out "$name-ca.pem" -extensions ca_ext "${dates[@]}"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name-key.pem" -out "$tmp/$name.csr" -subj "/CN=gatehouse.test"
  openssl ca -batch -notext -config "$tmp/ca.cnf" -cert "$name-ca.pem" \
    -keyfile "$tmp/$name-ca-key.pem" -in "$tmp/$name.csr" -out "$name.pem" \
    -extensions leaf_ext "${dates[@]}"
done
