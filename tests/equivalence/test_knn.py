"""scaled.knn (chunked, running top-k) equals the dense weighted kNN it replaces, on the digits.

`dense_knn_votes` is the kNN linear_eval.py computed before scaled/knn.py existed: the full
test x train cosine-similarity matrix, top-k, votes exp(sim / T) summed per class.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from scaled.data import eval_dataset
from scaled.features import pixel_features
from scaled.knn import knn_classify, knn_neighbours, knn_votes
from scaled.options import parse_config
from tests.conftest import tol


def dense_knn_votes(train_x, train_y, test_x, k: int, temperature: float = 0.07):
    """The previous implementation: one similarity matrix, top-k, weighted votes."""
    a, b = nnf.normalize(train_x, dim=1), nnf.normalize(test_x, dim=1)
    top, idx = (b @ a.T).topk(min(k, len(a)), dim=1)
    votes = torch.zeros(len(b), int(train_y.max()) + 1, dtype=top.dtype)
    return votes.scatter_add_(1, train_y[idx], (top / temperature).exp())


@pytest.fixture(scope="module")
def digits():
    cfg = parse_config(["--preset", "demo"])
    tr = pixel_features(eval_dataset(cfg, "train"))
    te = pixel_features(eval_dataset(cfg, "test"))
    return tr[0].double(), tr[1], te[0].double(), te[1]


@pytest.mark.parametrize("k", [20, 200])
def test_chunked_votes_equal_the_dense_ones(digits, k):
    train_x, train_y, test_x, _ = digits
    sims, idx = knn_neighbours(train_x, test_x, k, test_chunk=97, train_chunk=613)
    votes = knn_votes(sims, train_y[idx], 10)
    dense = dense_knn_votes(train_x, train_y, test_x, k)
    torch.testing.assert_close(votes, dense, **tol("float64"))
    assert torch.equal(votes.argmax(1), dense.argmax(1))


def test_accuracies_equal_the_dense_kNN(digits):
    train_x, train_y, test_x, test_y = digits
    chunked = knn_classify(
        train_x, train_y, test_x, test_y, ks=(20, 200), test_chunk=97, train_chunk=613
    )
    for k in (20, 200):
        dense = dense_knn_votes(train_x, train_y, test_x, k)
        top1 = float((dense.argmax(1) == test_y).double().mean())
        top5 = float((dense.topk(5, 1).indices == test_y[:, None]).any(1).double().mean())
        assert chunked[f"knn{k}_top1"] == top1
        assert chunked[f"knn{k}_top5"] == top5
    assert 0.5 < chunked["knn20_top1"] < 1.0  # raw-pixel kNN on digits: far above chance


def test_more_neighbours_than_train_rows():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(7, 4, generator=g), torch.randn(5, 4, generator=g)
    train_y = torch.arange(7) % 3
    sims, idx = knn_neighbours(train_x, test_x, 20, train_chunk=3)
    assert sims.shape == (5, 7) and torch.equal(idx.sort(1).values, torch.arange(7).expand(5, 7))
    votes = knn_votes(sims, train_y[idx], 3)
    torch.testing.assert_close(
        votes, dense_knn_votes(train_x, train_y, test_x, 20), **tol("float32")
    )
