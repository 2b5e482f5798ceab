"""`static`: one fixed option for the whole run (by default the most accurate member at its fastest thread
count and backend). The baseline a non-dynamic deployment gives."""

from __future__ import annotations

from ..options import Targets, by_accuracy
from .base import Policy


class StaticPolicy(Policy):
    name = "static"

    def __init__(self, option: int | None = None, member: int | None = None):
        super().__init__()
        self.fixed_option = option
        self.member = member

    def initial(self, targets: Targets) -> int:
        if self.fixed_option is not None:
            return self.fixed_option
        order = by_accuracy(self.options)
        if self.member is not None:
            order = [i for i in order if self.options[i].member == self.member] or order
        # the most accurate member; among its thread counts/backends the fastest profile
        best = self.options[order[0]].member
        same = [i for i in order if self.options[i].member == best]
        return min(same, key=lambda i: self.options[i].p95_ms)

    def describe(self) -> dict:
        return {"policy": self.name, "option": self.current}
