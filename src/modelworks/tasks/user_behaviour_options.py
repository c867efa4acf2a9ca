"""The user_behaviour task's options (`tasks.user_behaviour.<key>`)."""

from __future__ import annotations

from pydantic import field_validator

from modelworks.tasks.base import TRAIN, TaskOptions, option


class Options(TaskOptions):
    target_event: str = option(
        "purchase", stage="preprocess", description="the event propensity predicts"
    )
    horizon_days: float = option(
        14.0,
        stage="preprocess",
        gt=0,
        description="propensity: days after the cutoff in which the target event counts",
    )
    cutoff: str = option(
        "",
        stage="preprocess",
        description="ISO date-time splitting history from outcome; '' = last event - horizon_days",
    )
    funnel: list[str] = option(
        None,
        default_factory=lambda: ["view", "cart", "purchase"],
        stage="preprocess",
        description="ordered funnel steps (event names)",
    )
    funnel_days: float = option(
        7.0,
        stage="preprocess",
        gt=0,
        description="the user funnel: steps within this many days of the first",
    )
    session_gap_minutes: float = option(
        30.0, stage="preprocess", gt=0, description="inactivity that ends a session"
    )
    token_field: str = option(
        "category",
        stage="preprocess",
        pattern="^(category|item)$",
        description="what a token names: category or item (with the event and gap bucket)",
    )
    max_token_values: int = option(
        200,
        stage="preprocess",
        ge=2,
        description="most frequent categories/items with their own tokens; the rest share one",
    )
    max_len: int = option(
        128,
        stage="preprocess",
        ge=4,
        description="events per user the model reads (cutoff token included)",
    )
    propensity_features: bool = option(
        True,
        stage=TRAIN,
        description="propensity head also reads whole-history counts (recency, purchases, "
        "revenue, tenure, events), which a max_len window cuts",
    )
    train_windows: int = option(
        1,
        stage="preprocess",
        ge=1,
        description="training cutoffs, horizon_days apart before the test cutoff: each is one "
        "more (history, label) example per user",
    )
    extra_columns: list[str] = option(
        None,
        default_factory=list,
        stage="preprocess",
        description="more event-log columns as features (collect.sources.N.extra_fields keeps "
        "them): numeric ones in quantile buckets, others by their most frequent values",
    )
    extra_buckets: int = option(
        16, stage="preprocess", ge=3, description="buckets per extra column (0 = empty value)"
    )
    propensity_weight: float = option(
        1.0,
        stage=TRAIN,
        ge=0,
        description="weight of the propensity loss beside next-event prediction",
    )
    head_state_dim: int = option(
        8,
        stage="finetune",
        ge=0,
        description="finetune: the fresh propensity head reads the frozen state through this "
        "many directions (0 = the whole state)",
    )
    head_hidden: int = option(
        128, stage="finetune", ge=1, description="finetune: the propensity head's hidden width"
    )
    segments: int = option(
        0,
        stage="evaluate",
        ge=0,
        description="k-means segments of user embeddings; 0 = chosen by silhouette (2..8)",
    )
    min_group: int = option(
        10,
        stage=("evaluate", "serve"),
        ge=1,
        description="segment table cells with fewer users are hidden",
    )
    top_k: int = option(
        10, stage="serve", ge=1, description="items returned by /v1/users/score by default"
    )

    @field_validator("cutoff", mode="before")
    @classmethod
    def _date_text(cls, v):  # YAML reads 2026-04-01 as a date
        return v.isoformat() if hasattr(v, "isoformat") else v


def options_of(cfg) -> Options:
    """The config's `tasks.user_behaviour:` section (validated at config load)."""
    return Options.model_validate((cfg.tasks or {}).get("user_behaviour") or {})
