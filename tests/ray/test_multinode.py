"""A real two-node Ray cluster on this machine (two raylets, token auth on): the README's cluster path.

Jobs go in with ``ray job submit --working-dir`` as a user's would; the checks read the cluster's own
state API (which node ran each actor and task) and the run's storage folder.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.local_cluster import BIN, LocalCluster, free_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NODES = [{"num_cpus": 2, "resources": {"node_a": 1}}, {"num_cpus": 2, "resources": {"node_b": 1}}]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(NODES) as c:
        yield c


def _train(storage: Path, name: str, epochs: int) -> list[str]:
    return [
        "raylens", "train", "classify", "digits", "--model", "small_cnn", "--image-size", "16",
        "--epochs", str(epochs), "--checkpoint-every", "1", "--batch-size", "64", "--workers", "2", "--placement", "STRICT_SPREAD",
        "--storage", str(storage), "--name", name,
    ]  # fmt: skip


def _checkpoints(run: Path) -> list[Path]:
    """The run's complete checkpoints (folders with their history), oldest first."""
    done = [p for p in run.glob("checkpoint_*") if (p / "history.json").is_file()]
    return sorted(done, key=lambda p: p.stat().st_mtime)


def test_training_job_spreads_over_both_nodes_stops_and_resumes(cluster, tmp_path):
    """`raylens train classify` as a job: one worker per node; stopped mid-run and submitted again with the
    same name and storage, it resumes from its checkpoint; checkpoints and outputs land in the storage."""
    storage, name, epochs = tmp_path / "runs", "spread", 12
    cluster.submit(_train(storage, name, epochs), submission_id="train-1", working_dir=REPO, wait=False)
    run = storage / name
    deadline = time.monotonic() + 600

    def registered() -> bool:  # Ray Train lists a checkpoint in its snapshot once it has registered it
        snapshot = run / "checkpoint_manager_snapshot.json"
        return bool(_checkpoints(run)) and snapshot.is_file() and "checkpoint_" in snapshot.read_text()

    while not registered() and time.monotonic() < deadline:
        assert cluster.job_status("train-1") in ("PENDING", "RUNNING"), cluster.job("train-1").logs[-5000:]
        time.sleep(0.2)
    assert registered(), f"no checkpoint within 600 s:\n{cluster.job('train-1').logs[-5000:]}"
    cluster.stop_job("train-1")  # as `ray job stop` does; see the README for the CLI
    first = cluster.wait_job("train-1", timeout_s=120)
    assert first.status == "STOPPED", first.logs[-5000:]
    done_before = len(json.loads((_checkpoints(run)[-1] / "history.json").read_text()))
    assert 1 <= done_before < epochs, "the run should have been stopped mid-way"

    second = cluster.submit(_train(storage, name, epochs), submission_id="train-2", working_dir=REPO)
    assert second.status == "SUCCEEDED", second.logs[-8000:]
    history = json.loads((_checkpoints(run)[-1] / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(epochs)), "resumed: every epoch once, none repeated"
    assert history[-1]["val_top1"] > 0.5

    # one training worker on each node (the state API keeps dead actors: both jobs' workers are listed)
    workers = cluster.actors("RayTrainWorker")
    assert {w["node_id"] for w in workers} == {cluster.node_of("node_a"), cluster.node_of("node_b")}, workers

    # outputs under STORAGE/NAME/outputs, and the job's last lines say where each is
    outputs = run / "outputs"
    for f in ("curves.png", "history.csv", "metrics.json", "per_class.csv", "confusion.png", "model/config.json"):
        assert (outputs / f).is_file(), f
    tail = second.logs.strip().splitlines()[-12:]
    assert any(str(outputs / "curves.png") in line for line in tail), tail
    # from the latest checkpoint Ray Train had registered when the job stopped (one written just before the
    # stop may not be registered yet)
    resumed = re.search(r"resumed from \S+ at step \d+ \(epoch (\d+) done\)", second.logs)
    assert resumed and 1 <= int(resumed.group(1)) <= done_before, second.logs[-5000:]
    assert not (REPO / "raylens-train-classify").exists()
    # quiet: nothing of Ray's internals a user cannot act on (C++ core-worker errors, tracebacks of Ray's
    # own threads, deprecation warnings raised inside Ray, progress-bar notices)
    for noise in ("core_worker.cc", "Traceback", "DeprecationWarning", "Progress bars disabled"):
        assert noise not in second.logs, f"{noise!r} in the job's log:\n{second.logs[-5000:]}"


def test_ray_data_ingest_spreads_its_tasks_over_both_nodes(cluster, tmp_path):
    """A DICOM ingest (phantom CT/MR studies) run as a job: its read tasks ran on both nodes, no series lost."""
    script = tmp_path / "ingest.py"
    script.write_text(
        f"""
from raylens.runtime import init_ray
from raylens_domains.medical.deid import DeidConfig
from raylens_domains.medical.ingest import DicomIngestConfig
from raylens_domains.medical.phantom import PhantomConfig, generate_phantoms
from raylens_domains.medical.ray_reader import read_dicom

ph = generate_phantoms({str(tmp_path / "phantoms")!r}, PhantomConfig(n_patients=8, seed=0))
init_ray()
ingest = read_dicom(ph.root, DicomIngestConfig(deid=DeidConfig(key="multinode-test-key")))
rows = ingest.dataset.materialize().count()
report = ingest.report()
print("ROWS", rows, "SKIPPED", report.n_skipped)
print("REASONS", sorted({{s["reason"] for s in report.to_dict()["skipped"]}}))
"""
    )
    job = cluster.submit(["python", str(script)], submission_id="ingest-1", working_dir=REPO)
    assert job.status == "SUCCEEDED", job.logs[-5000:]
    line = next(ln for ln in job.logs.splitlines() if ln.startswith("ROWS"))
    _, rows, _, skipped = line.split()
    reasons = next(ln for ln in job.logs.splitlines() if ln.startswith("REASONS"))
    # 8 patients x (CT + MR); the one file skipped is the generator's labels.csv beside the DICOM files
    assert int(rows) == 16 and int(skipped) <= 1, line
    assert "'not a DICOM file (no DICM preamble)'" in reasons or int(skipped) == 0, reasons
    tasks = cluster.tasks("_header_batch") + cluster.tasks("_series_batch")  # the reader's two map_batches steps
    assert {t["node_id"] for t in tasks} == {cluster.node_of("node_a"), cluster.node_of("node_b")}, [
        (t["name"], t["node_id"]) for t in tasks
    ]


def _shapes_index(root: Path) -> Path:
    """A small index of shapes images under an untrained clip-tiny checkpoint (built in this process)."""
    from raylens.data.images import decode_image
    from raylens.index import VectorIndex
    from raylens.models import create_model
    from raylens_domains.natural.shapes import generate_shapes

    data = generate_shapes(root / "shapes", n_train=0, n_heldout=12, seed=3)
    rows = list(csv.DictReader(data.captions_path.open()))
    create_model("clip-tiny").save(root / "clip")
    model = create_model("clip-tiny", pretrained=str(root / "clip"))
    vectors = model.encode_images(
        model.preprocess.batch([decode_image((data.root / r["path"]).read_bytes()) for r in rows])
    )
    VectorIndex.build(
        vectors,
        {"path": [str(data.root / r["path"]) for r in rows], "caption": [r["caption"] for r in rows]},
        model="clip-tiny",
        checkpoint_hash=model.checkpoint_hash,
        checkpoint=str(root / "clip"),
        index_factory="Flat",
        data_roots=[data.root],
    ).save(root / "index")
    return root / "index"


def test_serve_deploy_of_the_search_config_reaches_replicas_on_both_nodes(cluster, tmp_path):
    """`serve deploy` of the packaged search config (two index replicas, which encode the queries) places them on both nodes and
    answers a text query over HTTP."""
    import requests
    import yaml

    from raylens.serve.ray_apps import load_config

    index = _shapes_index(tmp_path)
    (port,) = free_ports(1)
    cfg = load_config()
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]
    app["args"] |= {"indices": {"shapes": str(index)}, "data_roots": {"shapes": [str(tmp_path / "shapes")]}}
    for d in app["deployments"]:
        if d["name"] == "IndexServer":
            d["autoscaling_config"] |= {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [str(BIN / "serve"), "deploy", str(config)],
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 300
    answer = None
    while time.monotonic() < deadline:
        try:
            r = requests.post(f"http://127.0.0.1:{port}/search", json={"text": "a red circle", "k": 3}, timeout=10)
            if r.status_code == 200:
                answer = r.json()
                break
        except requests.RequestException:
            pass
        time.sleep(2)
    status = subprocess.run([str(BIN / "serve"), "status"], env=cluster.client_env(), capture_output=True, text=True)
    assert answer is not None, f"the search service never answered; serve status:\n{status.stdout}{status.stderr}"
    assert len(answer["hits"]) == 3, answer
    deadline = time.monotonic() + 180
    replicas: list[dict] = []
    while len(replicas) < 2 and time.monotonic() < deadline:  # the first replica may answer before the second is up
        replicas = [a for a in cluster.actors("IndexServer") if a["state"] == "ALIVE"]
        time.sleep(2)
    assert len(replicas) == 2 and {a["node_id"] for a in replicas} == {
        cluster.node_of("node_a"),
        cluster.node_of("node_b"),
    }, [(a["class_name"], a["node_id"]) for a in replicas]
    print(shlex.join(["serve", "deploy", str(config)]))
