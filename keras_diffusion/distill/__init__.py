"""One- and few-step generation: consistency models (CT, CD, ECT) and MeanFlow.

- `ConsistencyModel` (with `ConsistencyProcess`): consistency training from
  scratch, distillation from any trained model, or tuning of an EDM model;
  sampled by the `"consistency"` sampler in 1, 2, 4, ... steps.
- `ProgressiveDistillation` (with `DistilledGrid`): a student that takes
  one DDIM step for two of its teacher's, round after round.
- `MeanFlow`: average-velocity flows, from scratch or from a flow-matching
  model (`MeanFlow.from_flow`); sampled by the `"meanflow"` sampler.
"""

from keras_diffusion.distill.consistency import METHODS
from keras_diffusion.distill.consistency import ConsistencyModel
from keras_diffusion.distill.consistency import ConsistencyProcess
from keras_diffusion.distill.meanflow import MeanFlow
from keras_diffusion.distill.progressive import DistilledGrid
from keras_diffusion.distill.progressive import ProgressiveDistillation

__all__ = ["METHODS", "ConsistencyModel", "ConsistencyProcess", "DistilledGrid", "MeanFlow", "ProgressiveDistillation"]
