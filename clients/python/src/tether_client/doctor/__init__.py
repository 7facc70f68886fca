"""``tether doctor``: the whole connection checklist (F35); see :mod:`.run`."""

from .report import STEPS, DoctorConfig, DoctorReport, StepFailed, StepResult
from .run import Doctor, run_doctor

__all__ = ["STEPS", "Doctor", "DoctorConfig", "DoctorReport", "StepFailed", "StepResult", "run_doctor"]
