"""The live path's coverage monitoring: audits of cheap-tier answers, rolling coverage, recalibration.

``MonitorService`` is what the coverage-monitor deployment runs; ``CoverageMonitor`` is its
pure logic, and ``audits`` samples and labels the answers it learns from.
"""

from routenlp_ray.monitoring.audits import Audit, AuditedAnswer, AuditLabeller, AuditSampler, audit_from_outcome
from routenlp_ray.monitoring.monitor import CellCoverage, CoverageMonitor, LabelledAnswer, Recalibration
from routenlp_ray.monitoring.service import MonitorService

__all__ = [
    "Audit",
    "AuditLabeller",
    "AuditSampler",
    "AuditedAnswer",
    "CellCoverage",
    "CoverageMonitor",
    "LabelledAnswer",
    "MonitorService",
    "Recalibration",
    "audit_from_outcome",
]
