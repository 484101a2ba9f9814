"""The ``caches`` bench family's pieces that are not timing: the peer child process driven over
a pipe (started, one call per request, ended), the prefix-cached prior's FLOP count,
and the Karlo-reduced case's pieces."""
import sys

import pytest

from dalle2_fast.bench.caches import PeerProcess, prior_flops

CHILD = ("import sys\nprint('ready', flush=True)\n"
         "for line in sys.stdin:\n"
         "    if line.strip() != 'run': break\n"
         "    print('done', flush=True)\n")


def test_peer_process_runs_calls_and_ends():
    peer = PeerProcess([sys.executable, "-c", CHILD], env=None)
    peer()
    peer()
    peer.close()
    assert peer.proc.returncode == 0
    with pytest.raises(RuntimeError, match="did not start"):
        PeerProcess([sys.executable, "-c", "pass"], env=None)


def test_prior_flops_counts_the_prefix_once_and_the_trailing_tokens_per_step():
    w, d = 8, 2
    once = prior_flops(w, d, prefix=10, trailing=3, steps=0, rows=1)
    assert once == d * (24 * w**2 * 10 + 4 * w * 10 * 5)
    per_step = prior_flops(w, d, 10, 3, 1, 1) - once
    assert per_step == d * (24 * w**2 * 3 + 4 * w * 3 * 13)
    assert prior_flops(w, d, 10, 3, 4, 5) == 5 * (once + 4 * per_step)


def test_karlo_setup_runs_ours_cached_uncached_and_another_model_alike():
    pytest.importorskip("diffusers")
    import copy

    import torch

    from dalle2_fast.bench.caches import karlo_setup, prior_karlo_case

    k = karlo_setup(quick=True)
    cached, uncached = k.run(True), k.run(False)
    assert cached.shape == (k.batch, k.params["clip_dim"]) and torch.isfinite(cached).all()
    torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-4)
    other = copy.deepcopy(k.ours)
    torch.testing.assert_close(k.run(True, other), cached)  # model= is the prior the call samples with
    with torch.no_grad():
        other.out.weight.mul_(2.0)
    assert not torch.allclose(k.run(True, other), cached)
    case = prior_karlo_case(quick=True)
    assert [v.label for v in case.variants] == ["ours-prefix-cache", "ours-uncached", "diffusers"]
    assert case.baseline == "diffusers" and case.items == k.batch
