"""Registration: rigid GRE/CT -> T1, T1 -> MNI atlas normalisation, ITK transform files, resampling.

All matrices are RAS->RAS 4x4 named ``a_from_b``; ITK (LPS, resampling direction) only inside.
"""
from .transform_io import read_transform, write_transform  # noqa: F401
from .resample import resample  # noqa: F401
from .rigid import RigidResult, register_rigid  # noqa: F401
from .atlas import AtlasNormalization, normalize_to_mni  # noqa: F401
from .to_t1 import (head_mask, register_ct_to_t1, register_gre_to_t1, register_to_t1,  # noqa: F401
                     register_with_attempts, t1_brain_mask)
