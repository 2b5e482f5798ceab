"""Cheap predictions over many architectures at once: latency look-up tables (`latency`), MACs and
parameters (`flops`) and accuracy (`accuracy`), all vectorised over integer gene arrays (`genes`)."""

from ..evaluate import count_macs_params
from .accuracy import AccuracyPredictor, FitReport, kendall_tau, reference_predictor
from .flops import FlopsModel
from .genes import GeneCoding
from .latency import Correction, LatencyTable, arch_layers, context_dirname, load_tables, reference_table, space_layers

__all__ = ["AccuracyPredictor", "FitReport", "kendall_tau", "reference_predictor", "FlopsModel", "count_macs_params",
           "GeneCoding", "Correction", "LatencyTable", "arch_layers", "context_dirname", "load_tables",
           "reference_table", "space_layers"]
