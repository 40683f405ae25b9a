"""Medical pack on a local Ray: the DICOM reader end to end, Ray Train fusion with 2 workers, Serve."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from raylens.models import create_model
from raylens_domains.medical import (
    DeidConfig,
    DicomIngestConfig,
    EncoderConfig,
    FusionTrainConfig,
    PhantomConfig,
    VolumeTransformConfig,
    generate_phantoms,
    save_checkpoint,
)

pytestmark = pytest.mark.ray

KEY = "ray-test-key-00000000000000000000"
SMALL = dict(
    ct_size=16,
    ct_slices=10,
    ct_pixel_mm=6.0,
    ct_slice_mm=8.0,
    mr_size=16,
    mr_slices=9,
    mr_pixel_mm=6.0,
    mr_slice_mm=9.0,
)
TRANSFORM = VolumeTransformConfig(target_spacing=(6.0, 6.0, 6.0), spatial_size=(16, 16, 16))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_phantom")
    ph = generate_phantoms(
        root / "dicom",
        PhantomConfig(n_patients=6, seed=4, extras=True, rle_fraction=0.4, multiframe_fraction=0.4, **SMALL),
    )
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "dicom" / "ct_small.dcm")  # another shape, one slice
    return ph


@pytest.fixture(scope="module")
def ingest(ray_session, phantom):
    from raylens_domains.medical.ray_reader import read_dicom

    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY), labels=phantom.labels(), min_slices=1)
    return read_dicom(phantom.root, cfg, files_per_task=32)


def test_reader_gives_one_deidentified_row_per_series_and_a_report(phantom, ingest):
    from raylens.data import ReadResult
    from raylens_domains.medical import VolumeGeometry

    assert isinstance(ingest, ReadResult) and ingest.stats["files"] >= 2 * len(phantom.patients)
    ds, report = ingest.dataset, ingest.report()
    assert ds.count() == 2 * len(phantom.patients) + 1 == report.n_ok
    assert report.reasons() == {"not a DICOM file": 2, "missing slices": 1, "mixed series": 1}
    rows = ds.take_all()
    assert {r["modality"] for r in rows} == {"CT", "MR"}
    shapes = {tuple(np.asarray(r["volume"]).shape) for r in rows}
    assert (1, 128, 128) in shapes and (SMALL["ct_slices"], 16, 16) in shapes  # variable shapes in one dataset
    # geometry travels as one struct column that describes each row's volume
    assert "struct" in str(ds.schema().types[ds.schema().names.index("geometry")])
    assert all(VolumeGeometry.of(r["geometry"]).shape == np.asarray(r["volume"]).shape for r in rows)
    assert {r["normalization"] for r in rows} == {""}
    assert ingest.stats["slices"] >= sum(int(r["n_slices"]) for r in rows)
    labelled = [r for r in rows if r["label"] >= 0]
    assert len(labelled) == 2 * len(phantom.patients)
    assert all(str(r["patient_id"]).startswith("PAT-") and str(r["study_uid"]).startswith("2.25.") for r in rows)


def test_a_compute_strategy_reads_the_same_rows_through_ray_data(ray_session, phantom, ingest):
    """``compute=`` sends the volume step through Ray Data's ``map_batches``; the default runs plain
    tasks. Both give the same rows and the same report."""
    import ray

    from raylens_domains.medical.ray_reader import read_dicom

    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY), labels=phantom.labels(), min_slices=1)
    pooled = read_dicom(phantom.root, cfg, files_per_task=32, compute=ray.data.TaskPoolStrategy())

    def key(rows):
        return sorted(
            (r["series_uid"], tuple(np.asarray(r["volume"]).shape), float(np.asarray(r["volume"]).sum())) for r in rows
        )

    assert key(pooled.dataset.take_all()) == key(ingest.dataset.take_all())
    assert pooled.report().reasons() == ingest.report().reasons() and pooled.report().n_ok == ingest.report().n_ok


@pytest.fixture(scope="module")
def fusion_rows(ray_session, ingest):
    from raylens_domains.medical.ray_reader import fusion_dataset, pair_dataset

    return fusion_dataset(pair_dataset(ingest.dataset, by="patient"), TRANSFORM).materialize()


def test_normalise_pair_and_fusion_inputs_on_ray(ray_session, phantom, ingest, fusion_rows):
    from raylens_domains.medical.ray_reader import normalize_dataset

    norm = normalize_dataset(ingest.dataset.limit(3), TRANSFORM).take_all()
    assert len(norm) == 3 and all(np.asarray(r["volume"]).shape == (16, 16, 16) for r in norm)
    rows = fusion_rows.take_all()
    assert len(rows) == len(phantom.patients) + 1  # + the lone CT_small patient
    assert sorted(tuple(np.asarray(r["present"]).tolist()) for r in rows).count((1.0, 1.0)) == len(phantom.patients)
    assert all(np.asarray(r["mr_aligned"]).shape == np.asarray(r["ct"]).shape == (16, 16, 16) for r in rows)


def test_normalised_at_read_then_paired_is_normalised_once(ray_session, phantom, ingest):
    """The pack's ``dicom:`` source with a transform (read_dicom(transform=T)) -> pair -> fusion_dataset(T):
    each volume is normalised once, as normalising the raw volume once gives."""
    from raylens.data import open_source
    from raylens_domains.medical import Pseudonymizer, normalize_volume
    from raylens_domains.medical.ray_reader import fusion_dataset, pair_dataset

    p = next(p for p in phantom.patients if set(p.modalities) == {"CT", "MR"})
    case = Path(p.folders["CT"]).parent  # case_NNN/{ct,mr}
    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY), labels=phantom.labels())
    pre = open_source(f"dicom:{case}", TRANSFORM, config=cfg)
    assert pre.report().n_ok == 2 and pre.name == pre.report().source
    (ready,) = fusion_dataset(pair_dataset(pre.dataset, by="patient"), TRANSFORM).take_all()
    pid = Pseudonymizer(KEY).patient_id(p.patient_id)
    raw = next(r for r in ingest.dataset.take_all() if r["patient_id"] == pid and r["modality"] == "CT")
    once, _ = normalize_volume(raw["volume"], raw["geometry"], "CT", TRANSFORM)
    assert ready["key"] == pid and list(ready["present"]) == [1.0, 1.0]
    np.testing.assert_allclose(np.asarray(ready["ct"]), once, atol=1e-6)
    assert np.asarray(ready["ct"]).max() > 0.5  # a second CT window would keep everything under 0.31


def test_no_phi_in_ray_outputs_parquet_and_logs(ray_session, phantom, ingest, fusion_rows, tmp_path):
    ingest.dataset.write_parquet(str(tmp_path / "series_parquet"))
    fusion_rows.write_parquet(str(tmp_path / "fusion_parquet"))
    ingest.report().save(tmp_path / "report.json")
    blobs = [(f, f.read_bytes()) for f in tmp_path.rglob("*") if f.is_file()]
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    blobs += [(f, f.read_bytes()) for f in logs.rglob("*") if f.is_file() and f.stat().st_size < 50_000_000]
    assert sum(f.suffix == ".parquet" for f, _ in blobs) >= 2
    for where, data in blobs:
        for value in phantom.phi_values():
            assert value.encode() not in data, f"PHI {value!r} in {where}"


class Preempted(RuntimeError):
    """What 'the cluster took our nodes' looks like to the test's first run."""


class _StopsAfter:
    """A RayContext that dies (on every rank) right after the report of epoch ``epoch``."""

    def __init__(self, ctx, epoch: int):
        self._ctx, self._epoch = ctx, epoch

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def report(self, metrics, checkpoint_dir=None, *, checkpoint_step=False):
        kept = self._ctx.report(metrics, checkpoint_dir, checkpoint_step=checkpoint_step)
        if metrics["epoch"] == self._epoch:
            raise Preempted(f"stopped after epoch {self._epoch}")
        return kept


def _stopping_loop(config, ctx):
    from raylens_domains.medical.ray_train import fusion_worker_loop

    fusion_worker_loop(config, _StopsAfter(ctx, config["stop_after"]))


@pytest.mark.slow
def test_ray_train_mid_fusion_with_two_workers_stops_and_resumes(ray_session, fusion_rows, tmp_path):
    """A 2-worker run dies after its first checkpoint; the same name + storage picks it up there."""
    import sys
    import tempfile
    from dataclasses import asdict

    from ray import cloudpickle

    from raylens.models import load_model
    from raylens.train import RayTrainOptions
    from raylens.train.ray_fit import fit
    from raylens_domains.medical import FusionPredictor
    from raylens_domains.medical.ray_train import TRAIN_COLUMNS, train_fusion_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stopping loop travels with the test
    from ray.data.expressions import col

    fz = fusion_rows.filter(expr=col("label") >= 0).materialize()
    cfg = FusionTrainConfig(
        model="mid",
        epochs=3,
        batch_size=2,
        modality_dropout=0.2,
        checkpoint_every=1,
        model_kwargs={"encoder": {"widths": [4, 8, 8, 8]}},
    )
    opts = RayTrainOptions(num_workers=2, storage_path=str(tmp_path / "runs"), name="medical-test")
    loop_config = {"train": asdict(cfg), "has_val": True, "transform": asdict(TRANSFORM), "stop_after": 0}
    datasets = {"train": fz.select_columns(TRAIN_COLUMNS), "val": fz.select_columns(TRAIN_COLUMNS)}
    with pytest.raises(Exception, match="stopped after epoch 0"):
        fit(_stopping_loop, loop_config, datasets, opts)
    first = sorted((tmp_path / "runs" / "medical-test").glob("checkpoint_*/train_state.pt"))
    assert len(first) == 1 and json.loads((first[0].parent / "config.json").read_text())["epoch"] == 0
    first_history = json.loads((first[0].parent / "history.json").read_text())  # gone once 2 newer are kept

    downloads_before = set(Path(tempfile.gettempdir()).glob("raylens-resume-*"))
    res = train_fusion_ray(cfg, fz, fz, opts, transform=TRANSFORM)
    assert set(Path(tempfile.gettempdir()).glob("raylens-resume-*")) == downloads_before  # used in place
    assert [h["epoch"] for h in res.history] == [0, 1, 2] and res.steps == res.history[-1]["step"]
    assert res.history[:1] == first_history  # kept, not redone
    assert res.history[1]["lr"] < res.history[0]["lr"]  # the cosine schedule went on
    assert {"val_auc", "val_accuracy", "val_f1", "loss"} <= set(res.metrics)
    saved = json.loads((res.checkpoint / "config.json").read_text())
    assert saved["epoch"] == 2 and saved["run"]["name"] == "medical-test" and saved["train"]["epochs"] == 3
    assert (res.checkpoint / "curves.png").is_file() and (res.checkpoint / "history.csv").is_file()
    assert load_model(res.checkpoint).kind == "mid"
    assert FusionPredictor.from_checkpoint(res.checkpoint).transform == TRANSFORM


def _zip_dir(folders: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, folder in enumerate(folders):
            for f in Path(folder).iterdir():
                zf.write(f, f"s{i}/{f.name}")
    return buf.getvalue()


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)
    return buf.getvalue()


@pytest.mark.slow
def test_serve_endpoint_predicts_from_a_zipped_upload(serve_port, phantom, tmp_path):
    """A real HTTP request on 127.0.0.1: prediction + modalities used, limits, JSON errors, API key."""
    import requests
    from ray import serve

    from raylens_services.medical import MedicalFusionService

    model = create_model("mid", encoder=EncoderConfig(widths=(4, 8, 8, 8)))
    save_checkpoint(
        model, tmp_path / "ckpt", extra={"transform": {"target_spacing": [6.0, 6.0, 6.0], "spatial_size": [16, 16, 16]}}
    )
    port = serve_port
    from raylens.serve.auth import resolve_auth

    app = MedicalFusionService.options(ray_actor_options={"num_cpus": 0.5}).bind(
        checkpoint=str(tmp_path / "ckpt"),
        deid_key=KEY,
        limits={"max_body_bytes": 3_000_000, "max_pixels": 200_000, "max_batch": 2},
        auth=resolve_auth(api_key="let-me-in", environ={}),  # resolved here, enforced by the replica
    )
    serve.run(app, name="medical-test", route_prefix="/medical")
    url = f"http://127.0.0.1:{port}/medical"
    auth = {"x-api-key": "let-me-in"}
    try:
        # liveness is open and says only up; details need the key the app was built with
        r = requests.get(f"{url}/healthz", timeout=60)
        assert r.status_code == 200 and r.json() == {"status": "up"}
        assert requests.get(f"{url}/status", timeout=60).status_code == 401
        assert requests.get(f"{url}/status", headers={"x-api-key": "nope"}, timeout=60).status_code == 401
        assert requests.get(f"{url}/docs", headers=auth, timeout=60).status_code == 404
        r = requests.post(f"{url}/predict", data=b"x", timeout=60)
        assert r.status_code == 401 and json.loads(r.text)["error"]["code"] == "unauthorized"
        r = requests.get(f"{url}/status", headers={"authorization": "Bearer let-me-in"}, timeout=60)
        assert r.status_code == 200 and r.json() == {"ready": True, "model": "mid", "problem": None}

        p = phantom.patients[0]
        r = requests.post(
            f"{url}/predict",
            data=_zip_dir([p.folders["CT"], p.folders["MR"]]),
            headers={"content-type": "application/zip", **auth},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        assert pred["modalities_used"] == ["CT", "MR"] and pred["model"] == "mid"
        assert 0.0 <= pred["probability"] <= 1.0 and pred["label"] in (0, 1)
        assert pred["patient_id"].startswith("PAT-")
        for value in phantom.phi_values():
            assert value not in r.text
        # MR only: still a prediction, from the modality that is there
        r = requests.post(f"{url}/predict", data=_zip_dir([p.folders["MR"]]), headers=auth, timeout=120)
        assert r.status_code == 200 and r.json()["predictions"][0]["modalities_used"] == ["MR"]
        # malformed input: a JSON 4xx, never a 500
        bad = {
            "not a zip": (b"hello", 400),
            "traversal": (_zip_bytes({"../../x.dcm": b"x"}), 400),
            "no dicom": (_zip_bytes({"a.txt": b"text"}), 422),
            "truncated dicom": (
                _zip_bytes({"a.dcm": (Path(p.folders["CT"]).iterdir().__next__()).read_bytes()[:400]}),
                422,
            ),
            "empty": (b"", 400),
            "too big": (b"0" * 3_000_001, 413),
            "too many studies": (_zip_dir([q.folders["CT"] for q in phantom.patients[:3]]), 413),
        }
        for name, (data, status) in bad.items():
            r = requests.post(f"{url}/predict", data=data, headers=auth, timeout=120)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert r.json()["error"]["status"] == status, name
        r = requests.post(f"{url}/predict", data=b"x", headers={"content-type": "image/png", **auth}, timeout=60)
        assert r.status_code == 415
        r = requests.get(f"{url}/nope", headers=auth, timeout=60)
        assert r.status_code == 404 and "error" in r.json()
    finally:
        serve.delete("medical-test")


@pytest.mark.slow
def test_openapi_contract_passes_every_schemathesis_check(serve_port, tmp_path):
    """Schemathesis's own CLI with every check (examples, coverage, fuzzing) against the deployed
    service's live /openapi.json, with real and hostile zip-of-DICOM uploads from
    tests/schemathesis_hooks.py: 0 failures."""
    import os
    import subprocess
    import sys

    from ray import serve

    from raylens.serve.auth import resolve_auth
    from raylens_services.medical import MedicalFusionService
    from tests.schemathesis_hooks import MEDICAL_LIMITS

    repo = Path(__file__).resolve().parents[2]
    model = create_model("mid", encoder=EncoderConfig(widths=(4, 8, 8, 8)))
    save_checkpoint(
        model, tmp_path / "ckpt", extra={"transform": {"target_spacing": [6.0, 6.0, 6.0], "spatial_size": [16, 16, 16]}}
    )
    app = MedicalFusionService.options(ray_actor_options={"num_cpus": 0.5}).bind(
        checkpoint=str(tmp_path / "ckpt"),
        deid_key=KEY,
        limits=dict(MEDICAL_LIMITS),
        auth=resolve_auth(api_key="let-me-in", environ={}),
    )
    serve.run(app, name="medical-openapi-test", route_prefix="/medical-openapi")
    url = f"http://127.0.0.1:{serve_port}/medical-openapi"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(repo / "tests" / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--url",
        url,
        "--checks",
        "all",
        "-H",
        "x-api-key: let-me-in",
        "--max-examples",
        "10",
        "--workers",
        "1",
        "--generation-deterministic",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(repo)}
    try:
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        serve.delete("medical-openapi-test")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout and "3 selected" in done.stdout
