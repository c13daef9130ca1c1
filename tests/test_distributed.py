"""The plugin's DDP collectives for networks outside DDP wrappers, on two gloo ranks: parameters broadcast from
rank 0, gradients averaged as DDP averages them."""
import torch

from conftest import on_gloo_ranks


def _sync_worker(rank):
    from nnunet_uda.distributed import average_gradients, broadcast_parameters

    torch.manual_seed(rank)  # different networks and data on each rank
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    unused = torch.nn.BatchNorm1d(2)
    unused.running_mean.normal_()  # a buffer
    broadcast_parameters(net, unused)
    start = {k: v.clone() for k, v in (*net.state_dict().items(), *unused.state_dict().items())}
    x = torch.randn(5, 3)
    net(x).square().mean().backward()
    own = [p.grad.clone() for p in net.parameters()]
    average_gradients([*net.parameters(), *unused.parameters()])
    return {"start": start, "x": x, "own": own, "averaged": [p.grad for p in net.parameters()],
            "unused": [p.grad for p in unused.parameters()]}


def test_broadcast_and_gradient_average_match_ddp(tmp_path):
    ranks = on_gloo_ranks(_sync_worker, tmp_path)
    assert all(torch.equal(ranks[0]["start"][k], ranks[1]["start"][k]) for k in ranks[0]["start"])
    assert not torch.equal(ranks[0]["x"], ranks[1]["x"])
    for own_0, own_1, averaged_0, averaged_1 in zip(ranks[0]["own"], ranks[1]["own"], ranks[0]["averaged"],
                                                    ranks[1]["averaged"]):
        assert not torch.allclose(own_0, own_1)
        torch.testing.assert_close(averaged_0, (own_0 + own_1) / 2)
        assert torch.equal(averaged_0, averaged_1)
    assert ranks[0]["unused"] == [None, None]
