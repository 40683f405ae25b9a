"""Helpers shared by the raylens services (``services/``), plain Python unless named ``ray_*``.

- :mod:`raylens.serve.limits`: body/pixel/batch/k/text limits, API key (env or file), safe zip, JSON errors;
- :mod:`raylens.serve.query`: request parsing for search, embed and classify (every mistake a 4xx);
- :mod:`raylens.serve.http`: FastAPI error handlers, bounded body reads, CORS (off by default), auth;
- :mod:`raylens.serve.ab`: A/B traffic splits between model versions;
- :mod:`raylens.serve.classify`: CLIP zero-shot and timm classifiers from checkpoint directories;
- :mod:`raylens.serve.observe`: metric names and buckets;
- :mod:`raylens.serve.config`: serve config files resolved for a start;
- :mod:`raylens.serve.ray_apps`: starting apps by import path, deploying configs, replica counts (imports Ray).
"""

__all__: list[str] = []
