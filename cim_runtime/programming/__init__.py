"""Programming: drive every cell of a tile plan to its target conductance through a driver."""

from cim_runtime.programming.write_verify import WriteVerifyConfig, WriteVerifyResult, config_from_dict, write_verify

__all__ = ["WriteVerifyConfig", "WriteVerifyResult", "config_from_dict", "write_verify"]
