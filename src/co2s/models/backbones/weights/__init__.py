"""Load pretrained ViT weights into ``transformers`` modules and prove they arrived intact.

One entry point, :func:`load_backbone_weights` (:mod:`.dispatch`), decides by what ``source`` is:
a directory written by ``save_pretrained`` or a Hub id (downloaded on first use into the Hub
cache, :mod:`.hub`; then :mod:`.hf_folders`), a single DINOv3 file as Meta distributes it (:mod:`.dinov3_official`), or a
single OpenAI CLIP file (:mod:`.openai_clip`). No file is read in a way that could execute code
from it (:mod:`.readers`).

Every loader returns the model (``eval()`` mode, float32) and a *reference* state dict in the
module's own key names. :func:`verify_weights` (:mod:`.verify`) compares a module with that
reference and raises :class:`~co2s.errors.CheckpointError` naming every missing, unexpected or
changed tensor; call it again after building the segmentor, so that a later re-initialisation of
pretrained weights cannot go unnoticed.

Modules, one concern each:

* :mod:`.dispatch`: the backbone kinds and :func:`load_backbone_weights`, deciding by ``source``;
* :mod:`.verify`: :func:`verify_weights`, :func:`reference_subset`, tensor differences and the
  error messages that list every problem;
* :mod:`.hf_folders`: ``save_pretrained`` directories, the Hub cache lookup, and the check of the
  loaded module against the file;
* :mod:`.readers`: :func:`read_state_dict` (safetensors, ``torch.load(weights_only=True)``) and
  :func:`read_torchscript_tensors` (a restricted unpickler for TorchScript archives);
* :mod:`.dinov3_official`: :func:`convert_dinov3_official` (Meta's DINOv3 release);
* :mod:`.openai_clip`: :func:`convert_openai_clip` (OpenAI's CLIP release).
"""

from co2s.models.backbones.weights.dinov3_official import DINOV3_VARIANTS, convert_dinov3_official
from co2s.models.backbones.weights.dispatch import Kind, load_backbone_weights
from co2s.models.backbones.weights.hf_folders import HF_MODELS
from co2s.models.backbones.weights.openai_clip import OPENAI_CLIP_NON_WEIGHTS, convert_openai_clip
from co2s.models.backbones.weights.readers import read_state_dict, read_torchscript_tensors
from co2s.models.backbones.weights.verify import reference_subset, verify_weights

__all__ = [
    "DINOV3_VARIANTS",
    "HF_MODELS",
    "OPENAI_CLIP_NON_WEIGHTS",
    "Kind",
    "convert_dinov3_official",
    "convert_openai_clip",
    "load_backbone_weights",
    "read_state_dict",
    "read_torchscript_tensors",
    "reference_subset",
    "verify_weights",
]
