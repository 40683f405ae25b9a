"""EmbeddingSync gives the weights plain DDP gives, on two real gloo workers (no Ray)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from raylens.runtime import free_port
from raylens.train.embedding_sync import EmbeddingSync
from raylens.train.optim import adamw

VOCAB, DIM = 5000, 8


class _Text(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(16, DIM)
        self.head = nn.Linear(DIM, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tok(ids) + self.pos.weight[: ids.shape[1]]).mean(1)


def _train(rank: int, port: int, use_sync: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different starting weights: rank 0's must win, as with DDP
    model = _Text()
    sync = EmbeddingSync(model, 2) if use_sync else None
    net = nn.parallel.DistributedDataParallel(model)
    opt = adamw(model.parameters(), lr=0.1, weight_decay=0.01)
    gen = torch.Generator().manual_seed(100 + rank)  # each worker looks up different rows
    for step in range(4):
        ids = torch.randint(0, VOCAB if step % 2 else 50, (6, 5), generator=gen)
        opt.zero_grad(set_to_none=True)
        for j, micro in enumerate(ids.split(3)):  # two micro-batches, the first without all-reduce
            with net.no_sync() if j == 0 else contextlib.nullcontext():
                nn.functional.cross_entropy(net(micro), torch.zeros(len(micro), dtype=torch.long)).backward()
        if sync is not None:
            sync.reduce()
        opt.step()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out}.{rank}")
    dist.destroy_process_group()


def _run(tmp_path, use_sync: bool) -> list[dict[str, torch.Tensor]]:
    out = str(tmp_path / ("sync" if use_sync else "ddp"))
    mp.spawn(_train, args=(free_port(), use_sync, out), nprocs=2)
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.slow
def test_embedding_sync_matches_ddp_on_two_workers(tmp_path):
    ddp = _run(tmp_path, use_sync=False)
    ours = _run(tmp_path, use_sync=True)
    for key in ddp[0]:
        torch.testing.assert_close(ours[0][key], ours[1][key], rtol=0, atol=0)  # the workers agree
        torch.testing.assert_close(ours[0][key], ddp[0][key], rtol=1e-6, atol=1e-7)  # and agree with DDP
    assert not torch.equal(ddp[0]["tok.weight"], _Text().tok.weight)  # the table did train


def test_only_large_unshared_dense_tables_qualify():
    from raylens.train.embedding_sync import sparse_tables

    model = _Text()
    assert list(sparse_tables(model)) == ["tok.weight"]
    model.tok.weight.requires_grad_(False)
    assert sparse_tables(model) == {}
    assert sparse_tables(nn.Embedding(VOCAB, 4, sparse=True)) == {}
    assert list(sparse_tables(nn.Embedding(VOCAB, 4))) == ["weight"]


def test_one_worker_is_left_alone():
    model = _Text()
    sync = EmbeddingSync(model, world_size=1)
    assert sync.tables == {} and not hasattr(model, "_ddp_params_and_buffers_to_ignore")
    sync.reduce()  # nothing to do, no process group needed
