"""CTKD's temperature modules, importable where CTKD's users find them (`Global_T`, `Instance_T`,
`GradientReversal`); the feature, modules and curriculum included, is the plug-in helper/plugins/ctkd.py."""
from helper.plugins.ctkd import (  # noqa: F401
                                 Global_T,
                                 GradientReversal,
                                 GradientReversalFunction,
                                 Instance_T,
                                 add_ctkd_args,
                                 build_temperature,
                                 curriculum_lambda,
                                 map_temperature,
                                 stats,
)
