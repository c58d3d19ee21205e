"""Container health check: exit 0 when GET /healthz on this container answers 200.

Standard library only (it runs in the image with `python /opt/healthcheck.py`). Reads the
port from GATEWAY_PORT like the gateway does; HEALTHCHECK_URL overrides the URL.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("GATEWAY_PORT", "").strip() or "8080"
    url = os.environ.get("HEALTHCHECK_URL") or f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
