import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rq_hf.models.residual_quantizer import ResidualQuantizer, ResidualQuantizerOutput, SoftCodesOutput


def make_quantizer(**kwargs):
    torch.manual_seed(0)
    options = dict(codebook_size=32, code_depth=3, dim=8)
    options.update(kwargs)
    return ResidualQuantizer(**options)


def brute_force_codes(quantizer, z):
    residual = z.reshape(-1, quantizer.dim).clone()
    codes = []
    for d in range(quantizer.code_depth):
        book = quantizer.codebook(d)
        k = ((residual[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)  # full (N, K, dim): fine when tiny
        codes.append(k)
        residual = residual - book[k]
    return torch.stack(codes, -1).reshape(*z.shape[:-1], quantizer.code_depth)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_codes_match_brute_force_search(shared, chunk_size):
    quantizer = make_quantizer(shared_codebook=shared, chunk_size=chunk_size).eval()
    z = torch.randn(4, 5, 6, 8, generator=torch.Generator().manual_seed(1))
    out = quantizer(z)
    assert isinstance(out, ResidualQuantizerOutput)
    assert out.codes.dtype == torch.long and out.codes.shape == (4, 5, 6, 3)
    assert torch.equal(out.codes, brute_force_codes(quantizer, z))


@pytest.mark.parametrize("codebook_size", [1024, 192, 100])  # grouped argmin (256 / 64) and plain min
def test_large_codebooks_match_brute_force_and_break_ties_to_first(codebook_size):
    quantizer = make_quantizer(codebook_size=codebook_size, chunk_size=5).eval()
    z = torch.randn(23, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(quantizer(z).codes, brute_force_codes(quantizer, z))
    quantizer.embed[0, -1] = quantizer.embed[0, 3]  # a duplicate code: the first one wins, as argmin
    codes = quantizer(quantizer.codebook(0)[3:4] + 0.0).codes
    assert codes[0, 0] == 3


@pytest.mark.parametrize("codes_per_block", [256, 300, 64])  # grouped blocks, a short last block, plain min
def test_codebook_split_in_blocks_matches_brute_force_and_ties_go_to_the_first_block(codes_per_block):
    quantizer = make_quantizer(codebook_size=1000, chunk_size=6).eval()
    quantizer._codes_per_block = codes_per_block  # the nearest code is merged across 4 to 16 code blocks
    z = torch.randn(31, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(quantizer(z).codes, brute_force_codes(quantizer, z))
    quantizer.embed[0, 900] = quantizer.embed[0, 10]  # the same vector in the first and in a later block
    quantizer.embed[0, 950] = quantizer.embed[0, 700]  # ... and in two later blocks
    codes = quantizer(torch.stack([quantizer.codebook(0)[10], quantizer.codebook(0)[700]])).codes
    assert codes[:, 0].tolist() == [10, 700]


def test_shared_codebook_is_one_tensor_and_unshared_differ():
    shared = make_quantizer(shared_codebook=True)
    assert shared.codebook(0).data_ptr() == shared.codebook(2).data_ptr()
    separate = make_quantizer(shared_codebook=False)
    assert not torch.equal(separate.codebook(0), separate.codebook(1))
    assert shared.codebook(1).shape == (32, 8)
    assert len(list(shared.parameters())) == 0
    assert {"embed", "embed_ema", "cluster_size_ema", "initialized"} <= set(shared.state_dict())


def test_quantized_is_sum_of_chosen_vectors_and_loss_value():
    quantizer = make_quantizer(shared_codebook=False, commitment_weight=0.5).eval()
    z = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    out = quantizer(z)
    chosen = [quantizer.codebook(d)[out.codes[:, d]] for d in range(3)]
    assert torch.allclose(out.quantized, sum(chosen), atol=1e-5)
    assert torch.allclose(quantizer.embed_codes(out.codes), out.quantized, atol=1e-5)
    partial = torch.cumsum(torch.stack(chosen), 0)
    expected = 0.5 * torch.stack([((z - p) ** 2).mean() for p in partial]).mean()
    assert torch.allclose(out.commitment_loss, expected, atol=1e-6)


def test_usage_and_perplexity():
    quantizer = make_quantizer(code_depth=1).eval()
    book = quantizer.codebook(0)
    z = torch.cat([book[3:4].repeat(3, 1), book[7:8]])  # codes 3, 3, 3, 7
    out = quantizer(z)
    assert out.codes.flatten().tolist() == [3, 3, 3, 7]
    assert torch.allclose(out.codebook_usage, torch.tensor([2 / 32]))
    p = torch.tensor([0.75, 0.25])
    assert torch.allclose(out.perplexity, torch.exp(-(p * p.log()).sum()), atol=1e-4)


def test_embed_codes_with_fewer_depths():
    quantizer = make_quantizer(shared_codebook=False).eval()
    z = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(3))
    codes = quantizer(z).codes
    two = quantizer.embed_codes(codes[..., :2])
    assert two.shape == (2, 3, 8)
    assert torch.allclose(two, quantizer.codebook(0)[codes[..., 0]] + quantizer.codebook(1)[codes[..., 1]])
    one = quantizer.embed_codes(codes[..., :1])
    assert torch.allclose(one, quantizer.codebook(0)[codes[..., 0]])


def test_straight_through_gradient_reaches_input():
    quantizer = make_quantizer().eval()
    encoder = torch.nn.Linear(4, 8)
    x = torch.randn(16, 4)
    out = quantizer(encoder(x))
    (out.quantized.pow(2).sum() + out.commitment_loss).backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    z = torch.randn(5, 8, requires_grad=True)
    quantizer(z).quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient through the quantizer


def test_ema_moves_codebook_in_training_only():
    quantizer = make_quantizer()
    z = torch.randn(64, 8)
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer.eval()
    quantizer(z)
    quantizer.train()
    quantizer(z, update_codebook=False)
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key
    quantizer(z)
    assert not torch.equal(quantizer.embed, before["embed"])
    assert not torch.equal(quantizer.cluster_size_ema, before["cluster_size_ema"])


def test_ema_converges_to_cluster_means():
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(4, 1, 2, ema_decay=0.5, restart_unused_codes=False).train()
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    quantizer.embed[0].copy_(centers + 0.5)
    quantizer.embed_ema[0].copy_(centers + 0.5)
    z = centers.repeat_interleave(10, 0)
    for _ in range(30):
        quantizer(z)
    assert torch.allclose(quantizer.codebook(0), centers, atol=1e-3)


def test_unused_code_is_restarted_from_residuals():
    quantizer = make_quantizer(code_depth=1, ema_decay=0.9)
    z = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    quantizer.cluster_size_ema.fill_(100.0)  # every code counts as used ...
    quantizer.cluster_size_ema[0, 5] = 0.0  # ... except code 5, which is also far away from the data
    quantizer.embed[0, 5] = 1e3
    quantizer.train()(z)
    # The restart copies one residual (depth 1: an input row) exactly into the EMA sum of code 5 ...
    matches = (quantizer.embed_ema[0, 5] == z).all(dim=1)
    assert matches.sum() == 1, "code 5 was not restarted onto exactly one input row"
    # ... and the codebook vector is that sum over its Laplace-smoothed count of 1, i.e. the row itself.
    torch.testing.assert_close(quantizer.codebook(0)[5], z[matches][0], rtol=1e-4, atol=0)
    assert quantizer.cluster_size_ema[0, 5] == 1.0
    assert (quantizer.cluster_size_ema[0, torch.arange(32) != 5] > 50).all()


def test_restart_disabled_keeps_code():
    quantizer = make_quantizer(code_depth=1, restart_unused_codes=False)
    quantizer.cluster_size_ema.fill_(100.0)
    quantizer.cluster_size_ema[0, 5] = 0.0
    quantizer.embed_ema[0, 5] = 0.0
    quantizer.train()(torch.randn(40, 8))
    assert torch.cdist(quantizer.codebook(0)[5:6], torch.zeros(1, 8)).item() < 1e-3


def test_kmeans_init_finds_clusters():
    torch.manual_seed(0)
    centers = torch.randn(6, 8) * 10
    z = centers.repeat_interleave(20, 0) + 0.01 * torch.randn(120, 8)
    quantizer = ResidualQuantizer(6, 1, 8, kmeans_init=True, kmeans_iters=20, restart_unused_codes=False)
    assert not quantizer.initialized.any()
    quantizer.eval()(z)
    assert not quantizer.initialized.any()  # eval never initialises
    quantizer.train()(z)
    assert quantizer.initialized.all()
    # every center has a code close by (random starting points fall into distinct clusters with this seed)
    distance = torch.cdist(centers, quantizer.codebook(0)).min(1).values
    assert (distance < 0.1).all(), distance


def test_soft_codes_shapes_normalisation_and_determinism():
    quantizer = make_quantizer().eval()
    z = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(4))
    out = quantizer.soft_codes(z, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, SoftCodesOutput)
    assert out.probs.shape == (2, 3, 3, 32) and out.codes.shape == (2, 3, 3) and out.codes.dtype == torch.long
    assert torch.allclose(out.probs.sum(-1), torch.ones(2, 3, 3), atol=1e-5)
    again = quantizer.soft_codes(z, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.codes, again.codes) and torch.equal(out.probs, again.probs)
    hot = quantizer.soft_codes(z, temperature=1e3, generator=torch.Generator().manual_seed(1))
    other = quantizer.soft_codes(z, temperature=1e3, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(hot.codes, other.codes)  # high temperature: sampling really depends on the seed
    greedy = quantizer.soft_codes(z, temperature=0.5, stochastic=False)
    assert torch.equal(greedy.codes, quantizer(z).codes)
    # first depth: the distribution is the softmax of the negative squared distances
    expected = torch.softmax(-(torch.cdist(z.reshape(-1, 8), quantizer.codebook(0)) ** 2) / 0.5, -1)
    assert torch.allclose(greedy.probs[..., 0, :].reshape(-1, 32), expected, atol=1e-4)


def test_fp32_under_autocast_and_half_input():
    quantizer = make_quantizer().eval()
    z = torch.randn(20, 8)
    reference = quantizer(z).codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert torch.equal(out.codes, reference)
    half = quantizer(z.to(torch.bfloat16))
    assert half.quantized.dtype == torch.bfloat16
    assert torch.equal(half.codes, brute_force_codes(quantizer, z.to(torch.bfloat16).float()))


def test_bad_inputs():
    quantizer = make_quantizer()
    with pytest.raises(ValueError, match=r"dim=8.*\(4, 7\)"):
        quantizer(torch.randn(4, 7))
    with pytest.raises(TypeError, match="z.*floating.*torch.int64"):
        quantizer(torch.zeros(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes.*\[0, codebook_size=32\).*\[0, 32\]"):
        quantizer.embed_codes(torch.tensor([[0, 1, 32]]))
    with pytest.raises(ValueError, match=r"codes.*\[0, codebook_size=32\).*\[-1, 1\]"):
        quantizer.embed_codes(torch.tensor([[0, 1, -1]]))
    with pytest.raises(ValueError, match=r"codes.*code_depth=3.*\(1, 4\)"):
        quantizer.embed_codes(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="codes.*integer.*torch.float32"):
        quantizer.embed_codes(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="temperature.*positive.*0"):
        quantizer.soft_codes(torch.randn(2, 8), temperature=0)
    with pytest.raises(ValueError, match="d.*\\[0, 3\\).*3"):
        quantizer.codebook(3)


# ---------------------------------------------------------------- two processes, gloo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_step(rank, world_size, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # same initial codebook everywhere
        quantizer = ResidualQuantizer(32, 2, 4, kmeans_init=True, kmeans_iters=3).train()
        torch.manual_seed(100 + rank)  # different data and different local random streams per process
        for _ in range(2):
            quantizer(torch.randn(50, 4) * (rank + 1))
        state = {k: v.clone() for k, v in quantizer.state_dict().items()}
        torch.save(state, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_keep_identical_codebooks(tmp_path):
    mp.spawn(_distributed_step, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    torch.manual_seed(0)
    initial = ResidualQuantizer(32, 2, 4).embed
    assert not torch.equal(states[0]["embed"], initial)
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
