"""Transfer learning with the Fisher Task Distance: brute-force transfer affinity (Taskonomy) beside the FTD on a
family of pixel-to-pixel tasks, their agreement, and choosing the network to fine-tune for a new task by FTD.
See docs/transfer.md."""

from __future__ import annotations

from .affinity import AffinityResult, ahp_affinity, transfer_affinity
from .agreement import agreement, agreement_table, cost_table, kendall, plot_cost, plot_matrices, spearman
from .choose import SourceChoice, choose_source, compare_sources, comparison_table, fine_tune
from .report import report_text, write_report

__all__ = [
    "AffinityResult",
    "SourceChoice",
    "agreement",
    "agreement_table",
    "ahp_affinity",
    "choose_source",
    "compare_sources",
    "comparison_table",
    "cost_table",
    "fine_tune",
    "kendall",
    "plot_cost",
    "plot_matrices",
    "report_text",
    "spearman",
    "transfer_affinity",
    "write_report",
]
