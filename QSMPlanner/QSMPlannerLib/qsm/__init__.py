"""QSM reconstruction from multi-echo GRE: one module per pipeline stage.

dipole (kernel, forward model) · mask (brain and quality masks) · romeo / unwrap (exact quality-guided
and Laplacian unwrapping) · echo (MCPC-3D-S, weighted echo fit) · bgremove (V-SHARP, RESHARP, PDF,
LBV) · inversion (TKD, TV-ADMM) · pipeline (``reconstruct_qsm``).
"""
from .pipeline import FIELD_KINDS, QSMResult, check_gre, reconstruct_from_field, reconstruct_qsm

__all__ = ["FIELD_KINDS", "QSMResult", "check_gre", "reconstruct_from_field", "reconstruct_qsm"]
