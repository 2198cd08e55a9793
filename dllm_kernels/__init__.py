"""dllm-kernels: fused kernels for diffusion-LLM decoding.

`fused_unmask` commits one denoising step's tokens for a batch under any `Policy`;
`DecodeState` holds the per-sequence state those steps advance on the device; `select` is the
stateless step, and `row_stats` the mergeable statistics for rows split over a vocabulary;
`select_from_hidden` / `fused_unmask_from_hidden` run them from final hidden states and the LM
head (`lm_head_row_stats`), never materialising the logits.
`speculative_verify` accepts or rejects draft tokens against a target's logits (speculative decoding;
`dllm_kernels.speculative` holds the decoding loops).
"""
from . import _native  # noqa: F401  (loads the native ops)
from . import _fake  # noqa: F401  (meta implementations)
from .policy import CONF_KINDS, RULES, LearnedFilter, Policy
from .state import DecodeState
from .fused_unmask import UnmaskResult, fused_unmask
from .select import SelectResult, select
from .row_stats import row_stats  # noqa: E402
from .lm_head_row_stats import lm_head_row_stats  # noqa: E402
from .from_hidden import fused_unmask_from_hidden, select_from_hidden  # noqa: E402
from .block_attention import block_attention  # noqa: E402  (importing it registers its CPU/Triton/fake kernels)
from .generate import GenerateOutput, generate  # noqa: E402
from .speculative_verify import VerifyResult, speculative_verify  # noqa: E402
from . import models  # noqa: E402,F401

__all__ = ["CONF_KINDS", "RULES", "DecodeState", "LearnedFilter", "Policy", "UnmaskResult", "fused_unmask", "SelectResult",
           "select", "row_stats", "lm_head_row_stats", "select_from_hidden", "fused_unmask_from_hidden",
           "block_attention", "generate", "GenerateOutput", "models", "speculative_verify", "VerifyResult"]
__version__ = "0.1.0"
