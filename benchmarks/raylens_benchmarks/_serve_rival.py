"""The rival of ``raylens bench serve``: the search server a user would write instead of Ray Serve.

One process: FastAPI + uvicorn (one worker), the model and the index loaded once at start, and a
plain ``def`` route (FastAPI runs it in its thread pool) doing the same work as the in-process loop,
``encode_texts([q])`` + ``index.search``, one query per request. Torch keeps its default threads and
uvicorn its defaults but the access log (off, as Serve's is while the benchmark measures).

Run by the benchmark in a subprocess of its own (its CPU is not shared with the load client's):
``python _serve_rival.py --index DIR --checkpoint DIR --port PORT``; ``GET /healthz`` answers
once it is ready.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's real annotations.
import argparse

from pydantic import BaseModel, Field


class Query(BaseModel):
    text: str = Field(min_length=1, max_length=1000)
    k: int = Field(10, ge=1, le=100)


def build_app(index_dir: str, checkpoint: str, model_name: str = "clip-tiny"):
    from fastapi import FastAPI

    from raylens.index import VectorIndex
    from raylens.models import create_model

    model = create_model(model_name, pretrained=checkpoint)
    index = VectorIndex.load(index_dir)
    index.search(model.encode_texts(["warm up"]), k=1)
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "up"}

    @app.post("/search")
    def search(q: Query):
        hits = index.search(model.encode_texts([q.text]), k=q.k)[0]
        return {"k": q.k, "hits": [h.to_dict() for h in hits]}

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()
    uvicorn.run(build_app(a.index, a.checkpoint), host=a.host, port=a.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
