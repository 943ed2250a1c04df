"""What a person looks at: reports, plots, contact sheets, overlays, and calibration against annotated tiles."""

from activessf_engine.inspect.calibration import Objective, calibrate
from activessf_engine.inspect.contact_sheets import write_contact_sheets
from activessf_engine.inspect.overlay import write_overlays
from activessf_engine.inspect.report import build_report

__all__ = [
    "Objective",
    "build_report",
    "calibrate",
    "write_contact_sheets",
    "write_overlays",
]
