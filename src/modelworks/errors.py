"""Every error class of the package, in one place. A `ModelworksError` is a user-facing failure:
its message is one line saying what, where, and what to do. The CLI prints it without a
traceback and exits non-zero. Each subclass also derives from the built-in exception a caller
would catch (ValueError for bad input, RuntimeError for a failed step); the modules that raise
them re-export them under their old names."""


class ModelworksError(Exception):
    pass


class ArtifactError(ModelworksError, RuntimeError):
    """A missing, stale or foreign artifact; the message is one user-facing line."""


class CollectError(ModelworksError, RuntimeError):
    """Raised by `modelworks.collect`."""


class ConfigError(ModelworksError, ValueError):
    """A config that cannot be used; the message is one user-facing line."""


class EvaluateError(ModelworksError, ValueError):
    """A run or split that cannot be evaluated (no checkpoint, empty split, unknown metric)."""


class ExportError(ModelworksError, ValueError):
    """An export that cannot be made; the message is one user-facing line."""


class EncoderImportError(ModelworksError, ValueError):
    """Raised by `modelworks.models.encoder`."""


class HFError(ModelworksError, ValueError):
    """A Hugging Face folder we cannot import exactly, or a model we cannot export."""


class ModelError(ModelworksError, ValueError):
    """Raised by `modelworks.models.registry`."""


class PlanError(ModelworksError, ValueError):
    """A plan that cannot be made; the message is one user-facing line."""


class ImageDataError(ModelworksError, ValueError):
    """Raised by `modelworks.preprocess.images`."""


class ShardError(ModelworksError, ValueError):
    """Raised by `modelworks.preprocess.pack`."""


class PreprocessError(ModelworksError, RuntimeError):
    """Raised by `modelworks.preprocess.text`."""


class TokenizerError(ModelworksError, ValueError):
    """Raised by `modelworks.preprocess.tokenizer`."""


class DeviceError(ModelworksError, ValueError):
    """Raised by `modelworks.runtime`."""


class PromptTooLong(ModelworksError, ValueError):
    """Raised by `modelworks.serve.engine`."""


class RecommendationDataError(ModelworksError, ValueError):
    """Raised by `modelworks.tasks.recommendation`."""


class CheckpointError(ModelworksError, RuntimeError):
    """Raised by `modelworks.train.checkpoint`."""


class DataError(ModelworksError, ValueError):
    """Raised by `modelworks.train.data`."""


class LoRAError(ModelworksError, ValueError):
    """Raised by `modelworks.train.lora`."""


class ParallelError(ModelworksError, ValueError):
    """Raised by `modelworks.train.parallel`."""


class PrivacyError(ModelworksError, ValueError):
    """Raised by `modelworks.train.privacy`."""


class TrainingError(ModelworksError, RuntimeError):
    """Raised by `modelworks.train.trainer`."""


class CatalogueError(ModelworksError, ValueError):
    """A ready model that is not in the catalogue, not pulled, or whose download failed."""


class GGUFError(ModelworksError, ValueError):
    """A GGUF file we cannot read exactly (architecture, quantization, tokenizer, truncation)."""


class BehaviourDataError(ModelworksError, ValueError):
    """An event log the user_behaviour task cannot use (funnel steps, cutoff, target event)."""
