"""Policies, selectable by name. Adding one is one file: a `Policy` subclass plus one line in `REGISTRY`."""

from __future__ import annotations

from ...errors import UserError
from .. import native
from .base import Policy
from .dofa import DofaPolicy
from .feedback import FeedbackParams, FeedbackPolicy, NativeFeedbackPolicy
from .oracle import OraclePolicy
from .static import StaticPolicy

REGISTRY: dict[str, type[Policy]] = {
    "static": StaticPolicy,
    "dofa": DofaPolicy,
    "feedback": NativeFeedbackPolicy if native.NATIVE else FeedbackPolicy,  # the same law; C when in use
    "oracle": OraclePolicy,
}


def make_policy(name: str, **kwargs) -> Policy:
    """A new policy by name; `oracle` needs `phase_at` and `latency_by_phase` (see `OraclePolicy`)."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise UserError(f"unknown policy '{name}': expected one of {', '.join(REGISTRY)}")
    return cls(**kwargs)


__all__ = ["Policy", "REGISTRY", "make_policy", "StaticPolicy", "DofaPolicy", "FeedbackParams", "FeedbackPolicy",
           "NativeFeedbackPolicy", "OraclePolicy"]
