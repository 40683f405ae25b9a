"""A small client of the raylens search service (start it with `raylens serve`).

    python examples/serve_search.py "a red circle" --url http://127.0.0.1:8000 -k 5 --filter shape=circle
    python examples/serve_search.py --image query.png

Prints the hits (score, caption, path). Set RAYLENS_API_KEY when the service requires a key.
"""

from __future__ import annotations

import argparse
import os
import sys

import requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text", nargs="?", help="text query")
    ap.add_argument("--image", help="an image file to search with instead of text")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--filter", action="append", default=[], help="column=value (repeatable)")
    ap.add_argument("--index", help="index name (default: the service's first)")
    a = ap.parse_args()
    if bool(a.text) == bool(a.image):
        ap.error("give a text query or --image, not both")
    headers = {"x-api-key": os.environ["RAYLENS_API_KEY"]} if os.environ.get("RAYLENS_API_KEY") else {}
    filters = dict(f.split("=", 1) for f in a.filter) or None
    if a.image:
        import json

        with open(a.image, "rb") as f:
            data = {
                "k": str(a.k),
                **({"filters": json.dumps(filters)} if filters else {}),
                **({"index": a.index} if a.index else {}),
            }
            resp = requests.post(f"{a.url}/search", files={"image": f}, data=data, headers=headers, timeout=60)
    else:
        body = {"text": a.text, "k": a.k, "filters": filters, "index": a.index}
        resp = requests.post(
            f"{a.url}/search", json={k: v for k, v in body.items() if v is not None}, headers=headers, timeout=60
        )
    if resp.status_code != 200:
        err = resp.json().get("error", {})
        print(f"{resp.status_code} {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    body = resp.json()
    print(f"{len(body['hits'])} hits from {body['index']!r} in {body['took_ms']} ms")
    for h in body["hits"]:
        print(f"{h['score']:.4f}  {h.get('caption') or ''}  {h.get('path') or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
