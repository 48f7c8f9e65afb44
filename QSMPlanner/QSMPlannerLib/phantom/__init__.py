"""The digital patient: realistic anatomy (MNI ICBM152 + CIT168), veins, skull and air, a random
deformation and pose per seed, the QSM forward model (multi-echo GRE), a planning T1, a stereotactic
CT with the Leksell N-localizer, and the ground truth. See ``patient.make_patient``."""
from .patient import DigitalPatient, make_patient

__all__ = ["DigitalPatient", "make_patient", "write_patient"]


def write_patient(patient, out_dir, subject=None):
    """Write ``patient`` as BIDS + derivatives/truth (see ``writer.write_patient``)."""
    from .writer import write_patient as _write
    return _write(patient, out_dir, subject)
