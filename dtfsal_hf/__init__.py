"""dtfsal_hf: DTFSal audio-visual video saliency prediction as a Hugging Face transformers model."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor, AutoVideoProcessor

from .configuration_dtfsal import DTFSalConfig
from .feature_extraction_dtfsal import DTFSalFeatureExtractor
from .modeling_dtfsal import DTFSalModel, DTFSalOutput, DTFSalPreTrainedModel
from .pipeline_dtfsal import DTFSalVideoSaliencyPipeline, register_pipeline
from .processing_dtfsal import DTFSalProcessor
from .video_processing_dtfsal import DTFSalVideoProcessor

__version__ = "0.1.0"

AutoConfig.register("dtfsal", DTFSalConfig, exist_ok=True)
AutoModel.register(DTFSalConfig, DTFSalModel, exist_ok=True)
AutoFeatureExtractor.register(DTFSalConfig, DTFSalFeatureExtractor, exist_ok=True)
AutoVideoProcessor.register(DTFSalConfig, DTFSalVideoProcessor, exist_ok=True)
AutoProcessor.register(DTFSalConfig, DTFSalProcessor, exist_ok=True)
# `save_pretrained` of the model and of the processor then copies the files defining these classes (and
# the sibling files they import) into the folder and writes their `auto_map` entries, so a saved folder
# also loads with `AutoModel` / `AutoProcessor` and `trust_remote_code=True` where this package is not
# installed.
DTFSalConfig.register_for_auto_class()
DTFSalModel.register_for_auto_class("AutoModel")
DTFSalProcessor.register_for_auto_class("AutoProcessor")
DTFSalVideoProcessor.register_for_auto_class("AutoVideoProcessor")
DTFSalFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
# `pipeline("video-saliency", model=...)`; `remote_code.add_pipeline(folder)` makes a saved folder carry it.
register_pipeline()

__all__ = [
    "DTFSalConfig",
    "DTFSalModel",
    "DTFSalOutput",
    "DTFSalPreTrainedModel",
    "DTFSalFeatureExtractor",
    "DTFSalVideoProcessor",
    "DTFSalProcessor",
    "DTFSalVideoSaliencyPipeline",
    "__version__",
]
