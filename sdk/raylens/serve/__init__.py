"""Helpers shared by the raylens services (``services/``), plain Python unless named ``ray_*``.

- :mod:`raylens.serve.search_api`: the search service's HTTP API (FastAPI) over a backend;
  :mod:`raylens.serve.local` runs it in one process, ``raylens_services.search`` on Ray Serve;
- :mod:`raylens.serve.openapi`: its OpenAPI document, filled with the live service's facts;
- :mod:`raylens.serve.auth`: the API key, resolved when an app is built; no key on a public address;
- :mod:`raylens.serve.limits`: body/pixel/batch/k/text limits, safe zip, the one error mapping;
- :mod:`raylens.serve.query`: request parsing for search, embed and classify (every mistake a 4xx);
- :mod:`raylens.serve.media`: the image formats accepted (told from the header), per-request pixel budget;
- :mod:`raylens.serve.files`: an item's file, confined to the index's data roots;
- :mod:`raylens.serve.forms`: multipart bodies read from memory;
- :mod:`raylens.serve.http`: FastAPI error handlers, bounded body reads, CORS (off by default), auth;
- :mod:`raylens.serve.ab`: A/B traffic splits between model versions;
- :mod:`raylens.serve.classify`: CLIP zero-shot and timm classifiers from checkpoint directories;
- :mod:`raylens.serve.observe`: metric names and buckets, the client-error log filter, failure streaks;
- :mod:`raylens.serve.config`: serve config files resolved for a start;
- :mod:`raylens.serve.ray_apps`: starting apps by import path, deploying configs, replica counts (imports Ray).
"""

__all__: list[str] = []
