"""A minimal OpenAI-style HTTPS upstream for the TLS end-to-end test.

Usage: tls_upstream.py CERT KEY. Prints `listening on PORT`, then answers
POST /v1/chat/completions with a chat.completion whose content names the Host header it got.
"""

import json
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        model = json.loads(body)["model"]
        content = "tls ok host=%s auth=%s" % (
            self.headers.get("host"),
            "yes" if self.headers.get("authorization") else "no",
        )
        answer = json.dumps({
            "id": "chatcmpl-tls", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = DualStackServer(("::", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening on %d" % server.server_address[1], flush=True)
server.serve_forever()
