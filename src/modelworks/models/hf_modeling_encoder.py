"""A modelworks text classifier (models/encoder.py with a head) as a transformers model.

Not imported by modelworks: `modelworks export RUN OUT --format hf` copies this file into the
exported folder as `modeling_modelworks.py`, and transformers runs it there:

    AutoModelForSequenceClassification.from_pretrained(OUT, trust_remote_code=True)

The body is transformers' own `BertModel` (our encoder is BERT's architecture, weights map 1:1);
only the head is ours, because no stock BERT head computes it: BertForSequenceClassification puts
a tanh "pooler" on the first token, while our classifier pools the mean of the real tokens (or
the first token, `classifier_pooling`) and applies one linear layer, with no tanh. The config has
its own model_type, so loading without trust_remote_code fails loudly instead of quietly building
a stock BERT head with random weights. It reads only transformers and torch.
"""

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class ModelworksEncoderConfig(BertConfig):
    """BERT's config; `classifier_pooling` ("mean" or "cls") rides along as an extra key."""

    model_type = "modelworks_encoder"


class ModelworksEncoderForSequenceClassification(BertPreTrainedModel):
    config_class = ModelworksEncoderConfig
    config: ModelworksEncoderConfig

    def __init__(self, config: ModelworksEncoderConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        kwargs.pop("token_type_ids", None)  # trained with segment 0 everywhere, as served
        kwargs.pop("return_dict", None)
        hidden = self.bert(input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if getattr(self.config, "classifier_pooling", "mean") == "cls":
            pooled = hidden[:, 0]
        elif attention_mask is None:
            pooled = hidden.mean(1)
        else:  # the mean over real tokens only
            m = attention_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
