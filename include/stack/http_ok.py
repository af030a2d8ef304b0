"""Compose healthchecks: `python3 http_ok.py URL...` exits 0 when every URL answers 2xx; a URL
written `any:URL` only has to answer (any HTTP status: the server is up, e.g. Serve's proxy
before an application is deployed)."""

import sys
import urllib.error
import urllib.request

for arg in sys.argv[1:]:
    any_status = arg.startswith("any:")
    url = arg[4:] if any_status else arg
    if not url.startswith(("http://", "https://")):
        sys.exit(f"{url}: not an http(s) URL")
    try:
        urllib.request.urlopen(url, timeout=4).close()  # noqa: S310 (http(s) only, checked above)
    except urllib.error.HTTPError as err:
        if not any_status:
            sys.exit(f"{url}: HTTP {err.code}")
    except OSError as err:
        sys.exit(f"{url}: {err}")
