"""A development stand-in for Auth0 (docker compose, or a local stack without
docker: docs/deployment-guide.md). Never deploy it.

- :8080 serves /.well-known/jwks.json (the API's AUTH0_JWKS_URL points here);
- :8081 hands out signed tokens: GET /token?scope=...&sub=...&app=...
  to anyone who can reach it, so both listen on DEV_ISSUER_HOST, 127.0.0.1
  unless set (compose sets 0.0.0.0 inside its network and publishes :8081 on
  the host's 127.0.0.1 only).

Keys are generated at start, so tokens do not survive a restart of this service.
The tokens' `iss` is DEV_ISSUER_URL (the API's AUTH0_ISSUER) and their `aud`
is AUTH0_API_AUDIENCE, exactly as the API is configured in docker-compose.yml.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from api_service.dev.issuer import DevIssuer

# Every scope the API checks, as the demo's token: the operator tries GET /status too.
DEFAULT_SCOPES = "read:analytics read:schema read:status admin:etl"  # local compose only


def main() -> int:
    audience = os.environ["AUTH0_API_AUDIENCE"]
    issuer_url = os.environ["DEV_ISSUER_URL"]
    ttl = int(os.environ.get("TOKEN_TTL_SECONDS", "3600"))
    host = os.environ.get("DEV_ISSUER_HOST", "127.0.0.1")
    issuer = DevIssuer(audience=audience, host=host, port=8080).start()

    def mint(query: dict[str, list[str]]) -> str:
        return issuer.mint(
            sub=query.get("sub", ["compose-user"])[0],
            scopes=query.get("scope", [DEFAULT_SCOPES])[0],
            ttl=ttl,
            iss=issuer_url,
            azp=query.get("app", ["compose-dev"])[0],
        )

    class TokenHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/token":
                self.send_error(404)
                return
            body = (mint(parse_qs(url.query)) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    tokens = ThreadingHTTPServer((host, 8081), TokenHandler)
    tokens.daemon_threads = True
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    print(f"dev-issuer: JWKS on :8080, tokens on :8081/token (iss={issuer_url}, aud={audience})")
    print(f"dev-issuer: a token valid for {ttl} s: {mint({})}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    tokens.shutdown()
    issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
