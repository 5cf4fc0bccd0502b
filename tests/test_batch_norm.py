"""training.batch_norm: BatchNorm over the global batch of two real CPU processes (gloo) equals BatchNorm over the
whole batch in one process: outputs, gradients, running statistics."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.batch_norm import GlobalBatchNorm2d, synchronize_batch_norm


def _inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(7, 4, 5, 5, generator=generator) * 3 + 2  # 7 images: parts of 4 and 3
    upstream = torch.randn(7, 4, 5, 5, generator=generator)  # d(loss)/d(output)
    reference = nn.BatchNorm2d(4)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=generator)
        reference.bias.uniform_(-1, 1, generator=generator)
    return images, upstream, reference


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    images, upstream, reference = _inputs()
    norm = GlobalBatchNorm2d(4)
    norm.load_state_dict(reference.state_dict())
    part = images.tensor_split(world)[rank].clone().requires_grad_()
    for _ in range(2):  # two steps: the running statistics' momentum too
        output = norm(part)
    (output * upstream.tensor_split(world)[rank]).sum().backward()
    weight_grad, bias_grad = norm.weight.grad.clone(), norm.bias.grad.clone()
    dist.all_reduce(weight_grad)  # what DDP sums (and then averages) over processes
    dist.all_reduce(bias_grad)
    norm.eval()
    result = {"output": output.tolist(), "input_grad": part.grad.tolist(), "weight_grad": weight_grad.tolist(),
              "bias_grad": bias_grad.tolist(), "running_mean": norm.running_mean.tolist(),
              "running_var": norm.running_var.tolist(), "eval": norm(part.detach()).tolist()}
    with open(f"{out}/rank{rank}.json", "w") as file:
        json.dump(result, file)
    dist.barrier()
    dist.destroy_process_group()


def test_global_batch_norm_on_two_processes_equals_batch_norm_on_the_whole_batch(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2)
    images, upstream, reference = _inputs()
    whole = images.clone().requires_grad_()
    for _ in range(2):
        output = reference(whole)
    (output * upstream).sum().backward()
    reference.eval()
    expected_eval = reference(images)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, result in enumerate(ranks):
        def close(name, expected, atol=1e-5):
            assert torch.allclose(torch.tensor(result[name]), expected, atol=atol), name

        close("output", output.tensor_split(2)[rank])
        close("input_grad", whole.grad.tensor_split(2)[rank])
        close("weight_grad", reference.weight.grad, atol=1e-4)
        close("bias_grad", reference.bias.grad, atol=1e-4)
        close("running_mean", reference.running_mean)
        close("running_var", reference.running_var)
        close("eval", expected_eval.tensor_split(2)[rank])


def test_synchronize_batch_norm_swaps_modules_and_keeps_the_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    model[1].running_mean.fill_(0.5)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert synchronize_batch_norm(model, torch.device("cpu")) == 2
    assert isinstance(model[1], GlobalBatchNorm2d) and isinstance(model[3][0], GlobalBatchNorm2d)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # Without a process group it is plain BatchNorm.
    images = torch.randn(6, 3, 8, 8)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    plain.load_state_dict(before)
    assert torch.equal(model(images), plain(images))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's SyncBatchNorm runs on accelerators only")
def test_synchronize_batch_norm_uses_torchs_sync_batch_norm_on_gpus():
    model = nn.Sequential(nn.BatchNorm2d(4))
    synchronize_batch_norm(model, torch.device("cuda"))
    assert type(model[0]) is nn.SyncBatchNorm
