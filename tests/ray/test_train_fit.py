"""The one Ray Train wrapper's pieces that need no cluster: checkpoints found on local storage are used
in place, remote ones are downloaded once into one folder that is removed at the end; bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def _checkpoint_dir(root, step: int):
    d = root / f"checkpoint_{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights %d" % step)
    (d / "history.json").write_text(f'[{{"step": {step}}}]')
    return d


def test_local_checkpoints_are_used_in_place(tmp_path):
    from ray.train import Checkpoint

    from raylens.train.ray_fit import CheckpointCache

    cache = CheckpointCache()
    d = _checkpoint_dir(tmp_path, 1)
    assert cache.local_path(Checkpoint.from_directory(str(d))) == d
    assert cache.downloads == 0 and cache.directory is None
    cache.close()
    assert d.is_dir()  # closing never touches the run's own checkpoints


def test_remote_checkpoints_are_downloaded_once_into_one_folder_removed_on_close(tmp_path):
    from pyarrow.fs import LocalFileSystem, SubTreeFileSystem
    from ray.train import Checkpoint

    from raylens.train.ray_fit import CheckpointCache

    storage = tmp_path / "bucket"
    _checkpoint_dir(storage, 1), _checkpoint_dir(storage, 2)
    remote = SubTreeFileSystem(str(storage), LocalFileSystem())  # not "local" to pyarrow: like S3 or GCS
    cache = CheckpointCache()
    first = cache.local_path(Checkpoint("checkpoint_1", filesystem=remote))
    assert (first / "model.safetensors").read_bytes() == b"weights 1" and not first.is_relative_to(storage)
    assert cache.local_path(Checkpoint("checkpoint_1", filesystem=remote)) == first and cache.downloads == 1
    newer = cache.local_path(Checkpoint("checkpoint_2", filesystem=remote))
    assert newer == first and cache.downloads == 2  # the same folder, now holding the newer checkpoint
    assert (newer / "model.safetensors").read_bytes() == b"weights 2"
    assert sorted(p.name for p in newer.iterdir()) == ["history.json", "model.safetensors"]
    cache.close()
    assert not first.exists() and cache.directory is None
    assert (storage / "checkpoint_2" / "model.safetensors").is_file()


def test_fit_names_bad_arguments():
    from raylens.train.options import RayTrainOptions
    from raylens.train.ray_fit import fit

    with pytest.raises(ValueError, match="`split` names \\['train'\\]"):
        fit(print, {}, {"eval": object()}, RayTrainOptions(num_workers=1))
    with pytest.raises(TypeError, match="`loop` must be a function"):
        fit("train_clip", {}, {}, split=())
    with pytest.raises(TypeError, match="`opts` must be a RayTrainOptions"):
        fit(print, {}, {}, {"num_workers": 2}, split=())


def test_shard_epochs_keeps_a_small_shard_in_memory_after_the_first_epoch(ray_session):
    """Epoch 0 streams from Ray Data (buffer-shuffled) and keeps the rows; later epochs are seeded
    permutations of exactly those rows; a budget too small keeps streaming; drop_last holds."""
    import ray

    from raylens.train.ray_fit import shard_epochs

    ds = ray.data.from_items([{"x": i, "s": f"row{i}"} for i in range(50)]).materialize()

    def rows(batches):
        return np.concatenate([b["x"] for b in batches])

    epochs = shard_epochs(ds.iterator(), batch_size=8, seed=3, shuffle_buffer=16, cache_max_bytes=1 << 20)
    first = list(epochs(0))
    assert sorted(rows(first)) == list(range(50)) and [len(b["x"]) for b in first][-1] == 2
    kept = rows(first)
    for epoch in (1, 2):
        again = list(epochs(epoch))
        want = kept[np.random.default_rng(3 + epoch).permutation(50)]
        np.testing.assert_array_equal(rows(again), want)
        assert [str(s) for s in np.concatenate([b["s"] for b in again])] == [f"row{x}" for x in want]
    dropping = shard_epochs(ds.iterator(), batch_size=8, drop_last=True, cache_max_bytes=1 << 20)
    assert [len(rows(list(dropping(e)))) for e in range(3)] == [48, 48, 48]
    streaming = shard_epochs(ds.iterator(), batch_size=8, seed=3, shuffle_buffer=16, cache_max_bytes=64)
    list(streaming(0))
    assert sorted(rows(list(streaming(1)))) == list(range(50))


def test_worker_cache_budget_only_for_materialised_data_that_fits(ray_session, monkeypatch):
    """Only a materialised dataset has the same rows every epoch; a lazy one may re-augment, and a
    share bigger than WORKER_CACHE_MAX_BYTES per worker keeps streaming."""
    import ray

    from raylens.train import ray_fit

    lazy = ray.data.range_tensor(64, shape=(3, 8, 8))
    assert ray_fit.worker_cache_bytes(lazy, 2) == 0
    held = lazy.materialize()
    assert ray_fit.worker_cache_bytes(held, 2) == 2 * ray_fit.WORKER_CACHE_MAX_BYTES
    monkeypatch.setattr(ray_fit, "WORKER_CACHE_MAX_BYTES", held.size_bytes() // 4)
    assert ray_fit.worker_cache_bytes(held, 2) == 0


def _write_niceness(config, ctx):
    """A training loop that records its worker process's niceness and rank."""
    import os
    from pathlib import Path

    Path(config["out"], f"rank{ctx.rank}").write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))


@pytest.mark.parametrize("niceness", [0, 15])
def test_training_workers_run_at_the_niceness_asked_for(ray_session, tmp_path, niceness):
    """Ray starts task and actor processes at niceness 15 unless told otherwise; training workers get
    ``worker_niceness`` (0 by default, as Ray's own processes), each of them."""
    import sys

    from ray import cloudpickle

    from raylens.train import RayTrainOptions
    from raylens.train.ray_fit import fit

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loop travels with the test
    asked = {} if niceness == 0 else {"worker_niceness": niceness}  # 0 is the default
    opts = RayTrainOptions(num_workers=2, cpus_per_worker=0.5, storage_path=str(tmp_path / "runs"), **asked)
    fit(_write_niceness, {"out": str(tmp_path)}, {}, opts, split=())
    assert sorted(p.name for p in tmp_path.glob("rank*")) == ["rank0", "rank1"]
    assert {int(p.read_text()) for p in tmp_path.glob("rank*")} == {niceness}
