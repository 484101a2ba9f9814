"""The ``caches`` bench family's pieces that are not timing: the peer child process driven over
a pipe (started, one call per request, ended), and the prefix-cached prior's FLOP count."""
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
