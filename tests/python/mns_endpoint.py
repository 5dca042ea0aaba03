"""An HTTP endpoint that verifies MNS push signatures the way MNS documents it for HTTP
subscriptions, written independently of sluice with the `cryptography` package:

1. base64-decode the `x-mns-signing-cert-url` header and fetch the X.509 certificate there;
2. build the string-to-sign from the request as received: METHOD, Content-MD5, Content-Type,
   Date (each followed by a newline), every `x-mns-*` header as `name:value\n` (names lower-case,
   sorted), then the request target (path and query);
3. base64-decode `Authorization` and verify it as RSA-SHA1 (PKCS#1 v1.5) with the
   certificate's public key.

It also checks `Content-MD5` against the body (base64 of the hex MD5, as MNS sends it), so a
changed body is caught. A verified push is answered 201 and appended to LOG (one JSON object per
line: path, headers, body base64); anything else is answered 403.

Usage: python3 mns_endpoint.py LOG   (prints `port N` once listening on 127.0.0.1)
"""

import base64
import hashlib
import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

LOG = sys.argv[1]
lock = threading.Lock()


def string_to_sign(method, headers, path):
    mns = sorted((k, v) for k, v in headers.items() if k.startswith("x-mns-"))
    out = "%s\n%s\n%s\n%s\n" % (
        method,
        headers.get("content-md5", ""),
        headers.get("content-type", ""),
        headers.get("date", ""),
    )
    out += "".join("%s:%s\n" % (k, v) for k, v in mns)
    return out + path


def verify(method, headers, path, body):
    cert_url = base64.b64decode(headers["x-mns-signing-cert-url"]).decode()
    with urllib.request.urlopen(cert_url, timeout=5) as r:
        cert = x509.load_pem_x509_certificate(r.read())
    signature = base64.b64decode(headers["authorization"])
    cert.public_key().verify(
        signature,
        string_to_sign(method, headers, path).encode("utf-8"),
        padding.PKCS1v15(),
        hashes.SHA1(),
    )
    expected_md5 = base64.b64encode(hashlib.md5(body).hexdigest().encode()).decode()
    if headers.get("content-md5") != expected_md5:
        raise ValueError("Content-MD5 does not match the body")
    return cert_url


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v.strip() for k, v in self.headers.items()}
        try:
            cert_url = verify("POST", headers, self.path, body)
            code = 201
        except Exception as e:  # any failure is a refusal, as an endpoint would answer
            sys.stderr.write("refused: %r\n" % (e,))
            code = 403
        if code == 201:
            with lock, open(LOG, "a") as f:
                f.write(json.dumps({
                    "path": self.path,
                    "headers": headers,
                    "body": base64.b64encode(body).decode(),
                    "cert_url": cert_url,
                }) + "\n")
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("port %d" % server.server_address[1], flush=True)
server.serve_forever()
