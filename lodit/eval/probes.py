"""Understanding metrics on frozen features: linear probes and clustering of feature/token histograms.

- :func:`labelled_features`: clip embeddings and labels (and a dataset's own fold ids) of a
  labelled manifest, e.g. one built from ESC-50 — the input of everything below.
- :func:`linear_probe`: multinomial logistic regression (one linear layer, softmax cross-entropy
  plus an L2 penalty on the weights) on features standardised with the training split's
  per-channel mean/std, fitted full-batch by ``scipy.optimize.minimize`` (L-BFGS-B) with the
  exact gradient, from zero weights. The problem is convex, so the fit is deterministic and
  needs no learning rate. :func:`linear_probe_kfold` averages stratified k folds (the seed fixes
  the split) or a dataset's own folds.
- :func:`clustering_scores`: k-means (``scipy.cluster.vq.kmeans2``, k-means++ init, best of
  ``n_init`` restarts) on one vector per clip, then the **silhouette** of the clustering found and
  its **purity** against the labels (UniAudio-Token's ESC-10 clustering protocol).
- :func:`token_histograms`: per-clip normalised histograms of discrete tokens. Continuous latents
  are first quantised with :func:`quantize_latents` (a k-means codebook fitted on their frames),
  so clustering compares "bag of codes" histograms for any tokenizer.

Labels may be any hashable values (strings, ints); classes are the sorted distinct training labels.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.cluster.vq
import scipy.optimize
import scipy.special
import torch
import torch.nn.functional as F

from lodit.data.manifest import ManifestRow, read_manifest
from lodit.errors import LoditError
from lodit.eval.embedders import Embedder
from lodit.eval.embedding_cache import EmbeddingCache
from lodit.eval.results import MetricResult

# ----------------------------------------------------------------------------- labelled manifests


@dataclass
class LabelledFeatures:
    features: torch.Tensor  # (N, dim) clip embeddings
    labels: list[Hashable]
    fold_ids: list[Hashable] | None  # the manifest's own split, when ``fold_key`` was given
    model: str  # the embedder's description


def labelled_features(
    manifest: str | os.PathLike,
    embedder: Embedder,
    label: str,
    *,
    fold_key: str | None = None,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
) -> LabelledFeatures:
    """Embed every clip of ``manifest`` (honouring each row's ``offset``/``duration``) and read its
    label: ``label`` names a key of the row's ``labels`` object (e.g. ESC-50's ``category``) or a
    row field (``domain``, ``speaker``). ``fold_key`` likewise names each row's fold id. A row
    without the label is an error naming its line."""
    data = read_manifest(manifest)
    if len(data) == 0:
        raise LoditError(f"{manifest}: the manifest has no rows to probe")
    labels = [_row_value(row, label, manifest, line) for row, line in zip(data.rows, data.line_numbers)]
    fold_ids = None
    if fold_key is not None:
        fold_ids = [_row_value(row, fold_key, manifest, line) for row, line in zip(data.rows, data.line_numbers)]
    paths = [data.audio_path(row) for row in data.rows]
    segments = [(row.offset, row.duration) for row in data.rows]
    features = embedder.embed_files(paths, cache, segments=segments, progress=progress)
    return LabelledFeatures(features, labels, fold_ids, embedder.description)


def _row_value(row: ManifestRow, key: str, manifest: Any, line: int) -> Hashable:
    value = row.labels.get(key) if isinstance(row.labels, dict) else None
    if value is None and key in ("domain", "speaker", "caption", "transcript", "id"):
        value = getattr(row, key)
    if value is None:
        raise LoditError(
            f"{manifest} line {line}: the row has no {key!r} label; label every row or filter the manifest"
        )
    if isinstance(value, (list, dict)):
        raise LoditError(
            f"{manifest} line {line}: label {key!r} is a {type(value).__name__}; probes need one value per clip"
        )
    return value


# ----------------------------------------------------------------------------- linear probes


def linear_probe(
    train_X: torch.Tensor | np.ndarray,
    train_y: Sequence[Hashable],
    test_X: torch.Tensor | np.ndarray,
    test_y: Sequence[Hashable],
    *,
    max_iter: int = 500,
    weight_decay: float = 1e-4,
    model: str = "",
) -> MetricResult:
    """Accuracy of a linear classifier trained on ``train_X`` and scored on ``test_X``.

    ``max_iter`` bounds the L-BFGS iterations, ``weight_decay`` is the L2 penalty on the weights
    (not the biases). A test label never seen in training counts as wrong. ``model`` names the
    feature extractor for the record.
    """
    train = _features(train_X, "train features").numpy()
    test = _features(test_X, "test features").numpy()
    train_labels, test_labels = list(train_y), list(test_y)
    if len(train_labels) != train.shape[0] or len(test_labels) != test.shape[0]:
        raise LoditError(
            f"linear probe: {train.shape[0]} train / {test.shape[0]} test features but "
            f"{len(train_labels)} / {len(test_labels)} labels; give one label per clip"
        )
    if test.shape[1] != train.shape[1]:
        raise LoditError(f"linear probe: train features are {train.shape[1]}-dim but test features {test.shape[1]}-dim")
    classes = sorted(set(train_labels), key=repr)
    if len(classes) < 2:
        raise LoditError(f"linear probe needs at least 2 classes in the training split, got {classes}")
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index[label] for label in train_labels])

    mean, std = train.mean(0), np.maximum(train.std(0), 1e-8)
    train, test = (train - mean) / std, (test - mean) / std
    weight, bias = _fit_logistic(train, targets, len(classes), max_iter=max_iter, weight_decay=weight_decay)
    predicted = (test @ weight.T + bias).argmax(1)
    correct = [label in index and index[label] == p for label, p in zip(test_labels, predicted.tolist())]
    train_accuracy = float(((train @ weight.T + bias).argmax(1) == targets).mean())
    return MetricResult(
        "linear_probe_accuracy",
        float(np.mean(correct)) if correct else float("nan"),
        len(test_labels),
        model,
        {"n_train": len(train_labels), "n_classes": len(classes), "train_accuracy": train_accuracy,
         "dim": train.shape[1], "weight_decay": weight_decay},
    )


def linear_probe_kfold(
    X: torch.Tensor | np.ndarray,
    y: Sequence[Hashable],
    *,
    folds: int = 5,
    fold_ids: Sequence[Hashable] | None = None,
    seed: int = 0,
    model: str = "",
    **probe_options,
) -> MetricResult:
    """Mean test accuracy over cross-validation folds; per-fold accuracies and their std are in
    ``details``. By default ``folds`` stratified folds (each class dealt round-robin over the
    folds after a seeded shuffle); ``fold_ids`` (one per clip, e.g. ESC-50's official ``fold``)
    uses a dataset's own split instead, one fold per distinct id."""
    features = _features(X, "features")
    labels = list(y)
    if len(labels) != features.shape[0]:
        raise LoditError(f"linear probe: {features.shape[0]} features but {len(labels)} labels")
    if fold_ids is not None:
        ids = list(fold_ids)
        if len(ids) != len(labels):
            raise LoditError(f"linear probe: {len(labels)} clips but {len(ids)} fold ids")
        names = sorted(set(ids), key=repr)
        fold_of = np.array([names.index(i) for i in ids])
        folds = len(names)
    else:
        fold_of = np.empty(len(labels), dtype=np.int64)
        rng = np.random.default_rng(seed)
        for label in sorted(set(labels), key=repr):
            members = rng.permutation([i for i, value in enumerate(labels) if value == label])
            fold_of[members] = np.arange(len(members)) % folds
    if folds < 2:
        raise LoditError(f"k-fold probing needs at least 2 folds, got {folds}")
    accuracies = []
    for fold in range(folds):
        test_rows, train_rows = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        if len(test_rows) == 0:
            continue
        result = linear_probe(
            features[train_rows], [labels[i] for i in train_rows],
            features[test_rows], [labels[i] for i in test_rows],
            model=model, **probe_options,
        )
        accuracies.append(result.value)
    return MetricResult(
        "linear_probe_accuracy",
        float(np.mean(accuracies)),
        len(labels),
        model,
        {"folds": folds, "fold_accuracies": accuracies, "std": float(np.std(accuracies)),
         "split": "given fold ids" if fold_ids is not None else "stratified random",
         "n_classes": len(set(labels)), "dim": features.shape[1], "seed": seed},
    )


def _fit_logistic(
    X: np.ndarray, targets: np.ndarray, n_classes: int, *, max_iter: int, weight_decay: float
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean softmax cross-entropy + ``weight_decay * ||W||²``; returns ``(W (C, D), b (C,))``."""
    n, dim = X.shape
    one_hot = np.eye(n_classes)[targets]  # (N, C)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = params[: n_classes * dim].reshape(n_classes, dim), params[n_classes * dim :]
        logits = X @ weight.T + bias  # (N, C)
        log_probs = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
        loss = -(one_hot * log_probs).sum() / n + weight_decay * (weight**2).sum()
        residual = (np.exp(log_probs) - one_hot) / n  # d loss / d logits
        grad_weight = residual.T @ X + 2.0 * weight_decay * weight
        return float(loss), np.concatenate([grad_weight.ravel(), residual.sum(0)])

    solution = scipy.optimize.minimize(
        loss_and_gradient, np.zeros(n_classes * (dim + 1)), jac=True, method="L-BFGS-B", options={"maxiter": max_iter}
    )
    params = solution.x
    return params[: n_classes * dim].reshape(n_classes, dim), params[n_classes * dim :]


def _features(X: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    tensor = X.detach().cpu() if isinstance(X, torch.Tensor) else torch.from_numpy(np.asarray(X))
    tensor = tensor.double()
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise LoditError(f"{what} must be a non-empty (N, D) matrix, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise LoditError(f"{what} contain NaN or inf values")
    return tensor


# ----------------------------------------------------------------------------- clustering


def kmeans(
    X: np.ndarray, k: int, *, n_init: int = 5, iterations: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids (k, D), assignment (N,))``: best of ``n_init`` k-means++ runs by inertia."""
    data = np.asarray(X, dtype=np.float64)
    if not 1 <= k <= data.shape[0]:
        raise LoditError(f"k-means needs 1 <= k <= {data.shape[0]} (the number of vectors), got k={k}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centroids, assignment = scipy.cluster.vq.kmeans2(data, k, iter=iterations, minit="++", seed=rng, missing="warn")
        inertia = float(((data - centroids[assignment]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids, assignment)
    return best[1], best[2]


def silhouette_score(X: torch.Tensor | np.ndarray, assignment: Sequence[Hashable], *, chunk: int = 1024) -> float:
    """Mean silhouette ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` with Euclidean distances, where
    ``a(i)`` is the mean distance from ``i`` to the other members of its cluster and ``b(i)`` the
    smallest mean distance to another cluster's members; ``s(i) = 0`` for a one-member cluster.
    Distances are computed ``chunk`` rows at a time, so memory is O(chunk · N)."""
    data = _features(X, "features")
    labels = list(assignment)
    if len(labels) != data.shape[0]:
        raise LoditError(f"silhouette: {data.shape[0]} vectors but {len(labels)} cluster labels")
    clusters = sorted(set(labels), key=repr)
    if len(clusters) < 2:
        raise LoditError("the silhouette needs at least 2 clusters")
    cluster_of = torch.tensor([clusters.index(label) for label in labels])
    one_hot = F.one_hot(cluster_of, len(clusters)).double()  # (N, K)
    sizes = one_hot.sum(0)  # (K,)
    scores = torch.empty(data.shape[0], dtype=torch.float64)
    for start in range(0, data.shape[0], chunk):
        rows = slice(start, start + chunk)
        # Direct differences rather than the |a|²+|b|²-2ab shortcut, which loses digits for near points.
        distances = torch.cdist(data[rows], data, compute_mode="donot_use_mm_for_euclid_dist")  # (chunk, N)
        sums = distances @ one_hot  # (chunk, K): summed distance to each cluster
        own = cluster_of[rows]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)  # excludes the distance 0 to itself
        others = sums / sizes
        others.scatter_(1, own[:, None], float("inf"))
        b = others.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
        scores[rows] = torch.where(own_size > 1, s, torch.zeros_like(s))
    return float(scores.mean())


def purity(assignment: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Fraction of items whose label is their cluster's most common label."""
    assignment, labels = list(assignment), list(labels)
    if len(assignment) != len(labels) or not labels:
        raise LoditError(f"purity: {len(assignment)} cluster assignments but {len(labels)} labels")
    majority_total = 0
    for cluster in set(assignment):
        members = [label for c, label in zip(assignment, labels) if c == cluster]
        majority_total += max(members.count(label) for label in set(members))
    return majority_total / len(labels)


def clustering_scores(
    features: torch.Tensor | np.ndarray,
    labels: Sequence[Hashable],
    n_clusters: int | None = None,
    *,
    n_init: int = 5,
    seed: int = 0,
    model: str = "",
) -> dict[str, MetricResult]:
    """k-means on one vector per clip (features or token histograms) into ``n_clusters`` clusters
    (default: the number of distinct labels); returns ``{"silhouette", "purity"}`` results.
    ``silhouette`` scores the clusters found; its details also give the silhouette of the true
    labels themselves."""
    data = _features(features, "features")
    labels = list(labels)
    if len(labels) != data.shape[0]:
        raise LoditError(f"clustering: {data.shape[0]} vectors but {len(labels)} labels")
    k = n_clusters or len(set(labels))
    if k < 2:
        raise LoditError(f"clustering needs at least 2 clusters, got {k}")
    _, assignment = kmeans(data.numpy(), k, n_init=n_init, seed=seed)
    found = len(set(assignment.tolist()))
    silhouette = silhouette_score(data, assignment.tolist()) if found > 1 else float("nan")
    label_silhouette = silhouette_score(data, labels) if len(set(labels)) > 1 else float("nan")
    common = {"n_clusters": k, "n_classes": len(set(labels)), "seed": seed}
    return {
        "silhouette": MetricResult("silhouette", silhouette, len(labels), model,
                                   {**common, "of": "k-means clusters", "label_silhouette": label_silhouette}),
        "purity": MetricResult("purity", purity(assignment.tolist(), labels), len(labels), model, common),
    }


# ----------------------------------------------------------------------------- token histograms


def token_histograms(tokens: torch.Tensor | np.ndarray | Iterable[Sequence[int]], vocab: int) -> torch.Tensor:
    """``(N, vocab)`` per-clip token frequencies (each row sums to 1) from ``(N, T)`` token ids or
    a list of variable-length id sequences."""
    if vocab < 1:
        raise LoditError(f"token histograms need a vocabulary size >= 1, got {vocab}")
    rows = tokens if isinstance(tokens, (torch.Tensor, np.ndarray)) else list(tokens)
    histograms = torch.zeros(len(rows), vocab, dtype=torch.float64)
    for i, row in enumerate(rows):
        ids = torch.as_tensor(np.asarray(row), dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise LoditError(f"token sequence {i} is empty; every clip needs at least one token")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise LoditError(f"token sequence {i} has ids outside 0..{vocab - 1}; pass the right vocabulary size")
        histograms[i] = torch.bincount(ids, minlength=vocab).double() / ids.numel()
    return histograms


def quantize_latents(
    latents: Sequence[torch.Tensor], codebook_size: int, *, max_frames: int = 50_000, seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Tokens for continuous latents: a k-means codebook of ``codebook_size`` centroids fitted on
    (at most ``max_frames`` randomly chosen) frames of all clips, then every frame's nearest
    centroid. Returns ``(token ids per clip, codebook (codebook_size, D))``."""
    clips = [torch.as_tensor(c).detach().cpu().double() for c in latents]
    if any(c.dim() != 2 for c in clips):
        raise LoditError("quantize_latents expects one (T, D) latent matrix per clip")
    if not clips:
        raise LoditError("quantize_latents needs at least one clip")
    frames = torch.cat(clips)  # (total frames, D)
    rng = np.random.default_rng(seed)
    fit_rows = rng.choice(frames.shape[0], min(max_frames, frames.shape[0]), replace=False)
    codebook, _ = kmeans(frames[fit_rows].numpy(), codebook_size, n_init=1, seed=seed)
    codebook_t = torch.from_numpy(codebook)
    return [torch.cdist(clip, codebook_t).argmin(1) for clip in clips], codebook_t.float()
