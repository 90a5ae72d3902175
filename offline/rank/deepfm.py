"""DeepFM ranker over the feature specification's inputs, and its ONNX export.

Inputs follow ``data_exchange_center.model_signature``: ``sparse_ids`` int64 (batch, n_sparse), the
1-based vocabulary positions of each categorical field (0 = unknown), and ``dense`` float32
(batch, n_dense). Every sparse field has a ``dim``-vector per vocabulary entry. The logit is the sum of

- a first-order term: one weight per sparse id, a linear map of the dense values, and a bias;
- the FM second-order term: the sum of the pairwise dot products of the field vectors (the sparse
  fields, plus any dense fields listed in ``fm_dense_fields`` as value-scaled vectors);
- an MLP over the dense values (and, if ``mlp_on_embeddings``, the sparse embeddings).

Genre crosses join the two sides inside the model: for each group of per-genre user affinities listed
in ``cross_user_fields`` (one dense field per genre), the mean affinity over the candidate item's genres
(``cross_item_fields``, its genre flags). They are appended to the dense values before the linear part
and the MLP, so serving sends only user and item features.

Measured on ML-1M (see ``TrainConfig``): dense fields in the FM term, and the MLP over the id
embeddings, both overfit the user ids; the defaults keep the FM to the sparse fields and feed the MLP the
dense values and crosses only (the reference project found the same).

That logit is the like head: the probability that the user likes the item (rating > 3), trained on the
rated items. When the dense inputs end with the candidate's recall evidence (``n_evidence`` fields,
``chain.candidate_evidence``), a watch head reads the like head's inputs, its FM interaction vector
(the shared embeddings), its logit and the evidence, and is trained on the recall candidates to predict
what the user watches next (``offline/rank/candidates.py``). ``forward`` returns the served score as
(batch, 1): ``p_watch * p_like ** like_weight`` with the weight selected on validation, or ``p_like``
for a model without evidence. The model is rebuilt from a ``RankerConfig`` (saved as
``rank/model/model_args.json``), never guessed from a checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import read_json
from offline.common.onnx_export import export_onnx as export_module

INIT_STD = 0.01  # initial standard deviation of the embeddings


@dataclass(frozen=True)
class RankerConfig:
    """Everything needed to rebuild the model: input shape (from the feature spec) and architecture."""

    vocab_sizes: list[int]  # per sparse field, including index 0 for unknown values
    n_dense: int
    embed_dim: int
    hidden_dims: list[int] = field(default_factory=list)
    dropout: float = 0.0
    fm_dense_fields: list[int] = field(default_factory=list)  # dense fields in the FM term (value-scaled vectors)
    mlp_on_embeddings: bool = True  # the MLP reads the sparse embeddings as well as the dense values
    cross_user_fields: list[list[int]] = field(default_factory=list)  # groups of per-genre user dense fields
    cross_item_fields: list[int] = field(default_factory=list)  # the item's genre flag fields, same genre order
    n_evidence: int = 0  # the last dense fields: the candidate's recall evidence (read by the watch head only)
    watch_hidden_dims: list[int] = field(default_factory=list)
    like_weight: float = 1.0  # served score = p_watch * p_like ** like_weight (selected on validation)

    @property
    def n_base_dense(self) -> int:
        """Dense fields of the like head: the user's and the item's (the evidence follows them)."""
        return self.n_dense - self.n_evidence

    @property
    def n_sparse(self) -> int:
        return len(self.vocab_sizes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"n_sparse": self.n_sparse}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RankerConfig:
        return cls(
            vocab_sizes=[int(v) for v in raw["vocab_sizes"]],
            n_dense=int(raw["n_dense"]),
            embed_dim=int(raw["embed_dim"]),
            hidden_dims=[int(h) for h in raw["hidden_dims"]],
            dropout=float(raw["dropout"]),
            fm_dense_fields=[int(j) for j in raw["fm_dense_fields"]],
            mlp_on_embeddings=bool(raw["mlp_on_embeddings"]),
            cross_user_fields=[[int(j) for j in group] for group in raw["cross_user_fields"]],
            cross_item_fields=[int(j) for j in raw["cross_item_fields"]],
            n_evidence=int(raw.get("n_evidence", 0)),
            watch_hidden_dims=[int(h) for h in raw.get("watch_hidden_dims", [])],
            like_weight=float(raw.get("like_weight", 1.0)),
        )

    @property
    def n_crosses(self) -> int:
        return len(self.cross_user_fields)

    def check(self) -> None:
        """Raise ``ValueError`` on field indices that cannot fit the inputs."""
        fields = [j for group in self.cross_user_fields for j in group] + self.cross_item_fields + self.fm_dense_fields
        if not 0 <= self.n_evidence < self.n_dense:
            raise ValueError(f"n_evidence must lie in [0, {self.n_dense})")
        if any(not 0 <= j < self.n_base_dense for j in fields):
            raise ValueError(f"dense field indices must lie in [0, {self.n_base_dense})")
        if any(len(group) != len(self.cross_item_fields) for group in self.cross_user_fields):
            raise ValueError("every cross_user_fields group needs one field per item genre flag")


class DeepFM(nn.Module):
    offsets: torch.Tensor  # (n_sparse,) registered buffer
    fm_dense_fields: torch.Tensor  # (n_fm_dense,) registered buffer
    cross_user_fields: torch.Tensor  # (n_crosses * n_genres,) registered buffer
    cross_item_fields: torch.Tensor  # (n_genres,) registered buffer

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        offsets = torch.tensor([0, *config.vocab_sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # (n_sparse,) start of each field's rows
        n_rows = sum(config.vocab_sizes)
        self.sparse_embedding = nn.Embedding(n_rows, config.embed_dim)  # (n_rows, dim)
        self.sparse_weight = nn.Embedding(n_rows, 1)  # (n_rows, 1) first-order weights
        fm_dense = torch.tensor(config.fm_dense_fields, dtype=torch.int64)
        self.register_buffer("fm_dense_fields", fm_dense, persistent=False)  # (n_fm_dense,)
        self.dense_embedding = nn.Parameter(torch.empty(len(fm_dense), config.embed_dim))  # (n_fm_dense, dim)
        cross_user = torch.tensor([j for group in config.cross_user_fields for j in group], dtype=torch.int64)
        self.register_buffer("cross_user_fields", cross_user, persistent=False)
        self.register_buffer(
            "cross_item_fields", torch.tensor(config.cross_item_fields, dtype=torch.int64), persistent=False
        )
        n_values = config.n_base_dense + config.n_crosses
        self.dense_linear = nn.Linear(n_values, 1)  # first-order weights of dense values and crosses + global bias
        n_mlp_inputs = n_values + (config.n_sparse * config.embed_dim if config.mlp_on_embeddings else 0)
        self.mlp = build_mlp(n_mlp_inputs, config.hidden_dims, config.dropout)
        if config.n_evidence:  # inputs: the like head's values, the evidence, the FM vector, the like logit
            n_watch_inputs = n_values + config.n_evidence + config.embed_dim + 1
            self.watch_head = build_mlp(n_watch_inputs, config.watch_hidden_dims, 0.0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.sparse_embedding.weight, std=INIT_STD)
        nn.init.normal_(self.dense_embedding, std=INIT_STD)
        nn.init.zeros_(self.sparse_weight.weight)
        with torch.no_grad():  # unknown ids (index 0 of each field) contribute nothing, and are never trained
            self.sparse_embedding.weight[self.offsets] = 0.0
        nn.init.zeros_(self.dense_linear.weight)
        nn.init.zeros_(self.dense_linear.bias)

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Log-odds of a like: (batch, 1) from sparse_ids (batch, n_sparse) and dense (batch, n_dense)."""
        return self.like_parts(sparse_ids, dense)[0]

    def watch_inputs(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """What the watch head reads: (batch, n_values + n_evidence + dim + 1)."""
        like, interactions, values = self.like_parts(sparse_ids, dense)
        evidence = dense[:, self.config.n_base_dense :]
        return torch.cat([values, evidence, interactions, like], dim=1)

    def like_parts(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The like logit (batch, 1), the FM interaction vector (batch, dim) and the dense values with the
        genre crosses (batch, n_values)."""
        dense = dense[:, : self.config.n_base_dense]
        rows = sparse_ids + self.offsets  # (batch, n_sparse)
        sparse_vectors = self.sparse_embedding(rows)  # (batch, n_sparse, dim)
        fields = sparse_vectors  # (batch, n_fields, dim)
        if self.config.fm_dense_fields:
            fm_values = dense.index_select(1, self.fm_dense_fields)  # (batch, n_fm_dense)
            dense_vectors = fm_values.unsqueeze(-1) * self.dense_embedding  # (batch, n_fm_dense, dim)
            fields = torch.cat([sparse_vectors, dense_vectors], dim=1)  # (batch, n_sparse + n_fm_dense, dim)
        values = torch.cat([dense, self.genre_crosses(dense)], dim=1) if self.config.n_crosses else dense
        first_order = self.sparse_weight(rows).sum(dim=1) + self.dense_linear(values)  # (batch, 1)
        square_of_sum = fields.sum(dim=1).pow(2)  # (batch, dim)
        sum_of_squares = fields.pow(2).sum(dim=1)  # (batch, dim)
        interactions = 0.5 * (square_of_sum - sum_of_squares)  # (batch, dim)
        second_order = interactions.sum(dim=1, keepdim=True)  # (batch, 1)
        mlp_input = (
            torch.cat([sparse_vectors.flatten(start_dim=1), values], dim=1) if self.config.mlp_on_embeddings else values
        )
        deep = self.mlp(mlp_input)  # (batch, 1)
        return first_order + second_order + deep, interactions, values

    def genre_crosses(self, dense: torch.Tensor) -> torch.Tensor:
        """Mean user affinity over the item's genres, per affinity group: (batch, n_crosses)."""
        flags = dense.index_select(1, self.cross_item_fields)  # (batch, n_genres)
        n_genres = flags.sum(dim=1, keepdim=True).clamp(min=1.0)  # (batch, 1)
        affinity = dense.index_select(1, self.cross_user_fields)  # (batch, n_crosses * n_genres)
        affinity = affinity.reshape(-1, self.config.n_crosses, flags.shape[1])  # (batch, n_crosses, n_genres)
        return (affinity * flags.unsqueeze(1)).sum(dim=2) / n_genres  # (batch, n_crosses)

    def embedding_l2(self, sparse_ids: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the squared norms of the rows it looks up (a scalar L2 penalty)."""
        rows = sparse_ids + self.offsets  # (batch, n_sparse)
        return (
            self.sparse_embedding(rows).pow(2).sum(dim=(1, 2)).mean()
            + self.sparse_weight(rows).pow(2).sum(dim=(1, 2)).mean()
        )

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The served score (batch, 1)."""
        if not self.config.n_evidence:
            return torch.sigmoid(self.logits(sparse_ids, dense))
        inputs = self.watch_inputs(sparse_ids, dense)
        return served_score(self.watch_head(inputs), inputs[:, -1:], self.config.like_weight)


def served_score(watch_logit: torch.Tensor, like_logit: torch.Tensor, like_weight: float) -> torch.Tensor:
    """``p_watch * p_like ** like_weight``, computed in log space."""
    logsigmoid = nn.functional.logsigmoid
    return torch.exp(logsigmoid(watch_logit) + like_weight * logsigmoid(like_logit))


def build_mlp(n_inputs: int, hidden_dims: list[int], dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout blocks, then one output unit."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(n_inputs, width), nn.ReLU(), nn.Dropout(dropout)]
        n_inputs = width
    layers.append(nn.Linear(n_inputs, 1))
    return nn.Sequential(*layers)


def load_ranker(model_args_path: Path, weights_path: Path) -> DeepFM:
    """Rebuild the model from ``model_args.json`` (its ``ranker`` entry) and load its weights (eval mode)."""
    model = DeepFM(RankerConfig.from_dict(read_json(model_args_path)["ranker"]))
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    return model.eval()


def export_onnx(model: DeepFM, onnx_path: Path) -> Path:
    """Export ``forward`` as one self-contained ONNX file with the serving signature and a dynamic batch."""
    example = (
        torch.zeros((2, model.config.n_sparse), dtype=torch.int64),
        torch.zeros((2, model.config.n_dense), dtype=torch.float32),
    )
    return export_module(model, example, [sig.INPUT_SPARSE, sig.INPUT_DENSE], sig.OUTPUT_SCORE, onnx_path)
