"""What a person looks at: reports, plots, contact sheets, overlays, and calibration against annotated tiles."""

from activessf_engine import lazy_face

# Each name this package offers, and the module that holds it: imported on first use.
_WHERE = {
    "Objective": "calibration",
    "DEFAULT_STAINS": "calibration",
    "calibrate": "calibration",
    "write_contact_sheets": "contact_sheets",
    "write_overlays": "overlay",
    "build_report": "report",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_face(__name__, _WHERE)
