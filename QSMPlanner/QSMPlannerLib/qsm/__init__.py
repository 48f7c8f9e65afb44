"""QSM reconstruction from multi-echo GRE: one module per pipeline stage.

dipole (kernel, forward model) · mask (brain and quality masks) · romeo / unwrap (exact quality-guided
and Laplacian unwrapping) · echo (MCPC-3D-S, weighted echo fit) · bgremove (V-SHARP, RESHARP, PDF,
LBV) · inversion (TKD, TV-ADMM) · pipeline (``reconstruct_qsm``).
"""
from .pipeline import QSMResult, check_gre, reconstruct_qsm

__all__ = ["QSMResult", "check_gre", "reconstruct_qsm"]
