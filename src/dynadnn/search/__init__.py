"""Multi-objective architecture search over a space's gene coding.

* `problem`: what is optimised (`SearchProblem`: predicted accuracy and per-context latency over integer gene
  rows) and what comes back (`SearchResult`), with `pareto_mask` and `hypervolume`.
* `NSGA2Search` (`nsga2`): one NSGA-II run over all objectives at once; given latency budgets, a budget-niche
  evolution (`niche`) serves every budget of every context in one run, and a batched local search
  (`polish`) ends it. Its knobs are grouped in `NSGA2Config`, `NicheConfig` and `PolishConfig`.
* `EvolutionSweep` (`sweep`): Dynamic-OFA's procedure, kept faithful as the baseline: OFA's regularised
  evolution once per latency budget and context.
"""

from .niche import NicheConfig
from .nsga2 import NSGA2Config, NSGA2Search
from .polish import PolishConfig
from .problem import Searcher, SearchProblem, SearchResult, hypervolume, pareto_mask
from .sweep import BudgetError, EvolutionSweep

__all__ = ["BudgetError", "EvolutionSweep", "NSGA2Config", "NSGA2Search", "NicheConfig", "PolishConfig",
           "SearchProblem", "SearchResult", "Searcher", "hypervolume", "pareto_mask"]
