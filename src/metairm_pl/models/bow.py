"""Bag-of-words classifier of PunctuatedSST-2: frozen GloVe mean embedding, then an MLP.

As the reference ``BOWClassifier`` (kakaobrain/irm-empirical-study, ``punctuated_sst2/main.py``):
the mean of the pretrained vectors of a sentence's tokens, never trained, feeds a ReLU MLP.
The table is a buffer, not a parameter, so optimizers, the L2 term and Meta-IRM's
parameter dict only see the MLP.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from metairm_pl.data.glove import PAD_ID
from metairm_pl.errors import ConfigError
from metairm_pl.models.mlp import MLP


class BagOfWordsMLP(nn.Module):
    """Mean of frozen embedding rows over each sentence's token ids, then a ReLU MLP.

    Args:
        input_shape: ``(max_len,)``, one example's padded token ids (int64; 0 = padding).
        num_outputs: 1 logit for binary tasks, k for k classes.
        embeddings: float ``[vocab + 1, dim]`` table (row ``PAD_ID`` is ignored); the data
            module provides it (``PunctuatedSST2DataModule.model_kwargs()``).
        hidden_dim: hidden width; ``None`` = the embedding dimension (as the reference).
        n_hidden_layers: 1 in the Meta-IRM paper (appendix B).
        grayscale: not supported; the grayscale oracle is the data variant ``data=psst2_grayscale``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        embeddings: Optional[Tensor] = None,
        hidden_dim: Optional[int] = None,
        n_hidden_layers: int = 1,
        grayscale: bool = False,
    ) -> None:
        super().__init__()
        _check_arguments(input_shape, embeddings, grayscale)
        self.register_buffer("embeddings", embeddings.detach().float().clone())
        dim = int(embeddings.shape[1])
        width = dim if hidden_dim is None else hidden_dim
        # The head's input, a new mean at every call, never recurs: no input-cast cache.
        self.head = MLP((dim,), num_outputs, hidden_dim=width, n_hidden_layers=n_hidden_layers, reuse_input_cast=False)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def bag_means(self, token_ids: Tensor) -> Tensor:
        """``[n, dim]`` mean embedding of each row's non-padding ids (zero for an empty row)."""
        return F.embedding_bag(token_ids, self.embeddings, mode="mean", padding_idx=PAD_ID)

    @property
    def classifier(self) -> nn.Linear:
        """The last layer: logits = ``classifier(features(token_ids))``."""
        return self.head.classifier

    def features(self, token_ids: Tensor) -> Tensor:
        """The classifier's input: the head's last hidden layer over the bag means."""
        return self.head.features(self.bag_means(token_ids))

    def forward(self, token_ids: Tensor) -> Tensor:
        return self.head(self.bag_means(token_ids))


def _check_arguments(input_shape: tuple[int, ...], embeddings: Optional[Tensor], grayscale: bool) -> None:
    if grayscale:
        raise ConfigError(
            "model.grayscale=true is not supported by the bag-of-words model: for PunctuatedSST-2 the "
            "grayscale oracle is a data variant, use data=psst2_grayscale algorithm=erm."
        )
    if embeddings is None:
        raise ConfigError(
            "model bow_mlp needs the embedding table: pass embeddings=datamodule.model_kwargs()['embeddings'] "
            "(a data module with model_kwargs(), e.g. data=psst2)."
        )
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ConfigError(
            f"embeddings of shape {tuple(embeddings.shape)} are not allowed: use [vocab + 1, dim] with row 0 "
            "for padding."
        )
    if len(input_shape) != 1:
        raise ConfigError(
            f"model bow_mlp takes padded token ids of shape (max_len,), the data gives {tuple(input_shape)}: "
            "use it with data=psst2 or data=psst2_grayscale."
        )
