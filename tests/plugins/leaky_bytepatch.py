"""A deliberately LEAKY byte-patch model: the global model is not shifted by one patch.

Global output k is built from patch k itself, so the local decoder predicting a byte of patch k
sees that patch's later bytes — the "patch decoder sees its own patch" leak. `lumi check` must
reject it, naming the failing position. Used by tests/test_zoo_bytepatch.py; run it with
`lumi check leaky_bytepatch:nano --model-file tests/plugins/leaky_bytepatch.py` (exits 1).
"""

import torch
import torch.nn.functional as F

from lumi.models import register
from lumi.models.bytepatch import BytePatch


@register(
    "leaky_bytepatch",
    description="bytepatch WITHOUT the one-patch global shift (leaks the current patch; for tests)",
    presets={"nano": dict(patch_size=4, n_global_layers=1, d_global=32, n_global_heads=1,
                          n_local_layers=1, d_local=32, n_local_heads=1)},
    cpu_presets=(),  # never part of the registry-wide check: it is meant to fail
)
class LeakyBytePatch(BytePatch):
    def global_input(self, byte_emb: torch.Tensor, n_patches: int) -> torch.Tensor:
        b, t, d = byte_emb.shape
        p = self.config.patch_size
        # Patch k of the predicted positions u = kP..kP+P-1 holds bytes kP..kP+P-1 themselves:
        # no pad patch in front, so the decoder predicting byte u reads bytes >= u.
        padded = F.pad(byte_emb, (0, 0, 0, n_patches * p - t))
        return padded.reshape(b, n_patches, p * d)
