"""Every distillation method, one file each; importing a file registers its `--distill` name."""
from .base import Distiller, Needs, distiller_registry, get_distiller_class, register_distiller  # noqa: F401
from .KD import DistillKL, DistillKL_logit_stand  # noqa: F401
from .FitNet import HintLoss  # noqa: F401
from .AT import Attention  # noqa: F401
from .SP import Similarity  # noqa: F401
from .CC import Correlation  # noqa: F401
from .VID import VIDLoss  # noqa: F401
from .RKD import RKDLoss  # noqa: F401
from .PKT import PKT  # noqa: F401
from .AB import ABLoss  # noqa: F401
from .FT import FactorTransfer  # noqa: F401
from .FSP import FSP  # noqa: F401
from .NST import NSTLoss  # noqa: F401
from .KDSVD import KDSVD  # noqa: F401
from .IRG import IRGLoss  # noqa: F401
from .HKD import HKDLoss  # noqa: F401
from .CRD import CRDDistiller  # noqa: F401
from .SemCKD import SemCKDLoss  # noqa: F401
from .DKD import DKDloss  # noqa: F401
from .CKD import CKDLoss  # noqa: F401
from .CRCD import CRCDDistiller, CRCDLoss  # noqa: F401
from .ReviewKD import ABF, hcl_loss  # noqa: F401
from .OFD import OFDLoss  # noqa: F401
from .SimKD import SimKDDistiller  # noqa: F401
from .SRRL import SRRLDistiller  # noqa: F401
from .DIST import DIST  # noqa: F401
from .MLKD import MLKDLoss  # noqa: F401
from .ICKD import ICKDLoss  # noqa: F401


def __getattr__(name):
    """CTKD's temperature modules, once importable here, now live with their plug-in (helper/plugins/ctkd.py)."""
    if name in ("Global_T", "Instance_T", "GradientReversal"):
        from helper.plugins import ctkd
        return getattr(ctkd, name)
    raise AttributeError(f"module 'distiller_zoo' has no attribute {name!r}")
