"""Deliberately broken: `vocabspace` (interaction variant) with the reversed position mask of the
published v8_lowrank_vv before commit daaff06 (urmzd/exp-agi-models).

The position-difference matrix had its arguments swapped: lag[t, s] = s - t instead of t - s, so the
"earlier positions" mask (lag > 0) selected LATER positions, each weighted decay^(s-t-1). The model
could read the next tokens, which is how it reached 0.467 BPB. `lumi check` must reject it.
Used by tests/test_zoo_vocabspace.py; never register it in Lumi itself.
"""

import torch

from lumi import register
from lumi.models.vocabspace import DecayedInteraction, VocabSpace


class ReversedMaskInteraction(DecayedInteraction):
    @staticmethod
    def lag(seq_len, device):
        pos = torch.arange(seq_len, device=device)
        return pos[None, :] - pos[:, None]  # the bug: s - t, so "lag > 0" means FUTURE keys


@register("leaky_vocabspace", description="BROKEN on purpose: v8_lowrank_vv with the pre-daaff06 reversed mask",
          presets={"nano": dict(variant="interaction", n_steps=2, rank=8)}, cpu_presets=["nano"])
class LeakyVocabSpace(VocabSpace):
    interaction_class = ReversedMaskInteraction
