"""The NPZ data contract (docs/data_contract.md): the rules as data, checking and safe reading.

Split by responsibility, each module importing only those listed before it:
``spec`` (the rules, limits and report types), ``reading`` (zip directory and ``.npy`` headers,
declared sizes checked against the file), ``streaming`` (member data in bounded memory),
``structure`` (header-only checks), ``diffraction``, ``optional`` (the optional members and the
probe's power) and ``values`` (value checks, streamed), ``io`` (``check_npz``,
``read_contract_npz``, ``write_contract_npz`` and the validate-npz helpers).
"""

from .io import (
                 ContractData,
                 check_npz,
                 find_npz_files,
                 read_contract_npz,
                 read_npz_arrays,
                 report_document,
                 require_valid,
                 validate_files,
                 write_contract_npz,
)
from .reading import MemberHeader
from .spec import (
                 ARRAY_KEYS,
                 CONTRACT,
                 COUNTS_REL_TOL,
                 DEFAULT_CHUNK_BYTES,
                 FILE_KEY,
                 MAX_COMPRESSION_RATIO,
                 MAX_DEFLATE_RATIO,
                 MAX_VERIFIABLE_COUNTS,
                 MAX_WHOLE_READ_BYTES,
                 MEMBERS,
                 METADATA_KEY,
                 METADATA_SCHEMA,
                 NOMINAL_KEYS,
                 OPTIONAL,
                 OPTIONAL_KEYS,
                 PROBE_POWER_REL_TOL,
                 FileReport,
                 KeySpec,
                 Problem,
                 continuous_counts,
                 counts_from_diffraction,
                 shape_text,
)

__all__ = [
    "ARRAY_KEYS", "CONTRACT", "COUNTS_REL_TOL", "DEFAULT_CHUNK_BYTES", "FILE_KEY", "MAX_COMPRESSION_RATIO",
    "MAX_DEFLATE_RATIO", "MAX_VERIFIABLE_COUNTS", "MAX_WHOLE_READ_BYTES", "MEMBERS", "METADATA_KEY", "METADATA_SCHEMA",
    "NOMINAL_KEYS", "OPTIONAL", "OPTIONAL_KEYS", "PROBE_POWER_REL_TOL",
    "ContractData", "FileReport", "KeySpec", "MemberHeader", "Problem", "check_npz", "continuous_counts",
    "counts_from_diffraction",
    "find_npz_files", "read_contract_npz", "read_npz_arrays", "report_document", "require_valid", "shape_text",
    "validate_files",
    "write_contract_npz",
]
