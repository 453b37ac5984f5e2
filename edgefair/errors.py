"""The error hierarchy. The CLI turns every EdgefairError into a one-line message and exit code 2;
any other exception (GeneratedModelError included) is a bug: a traceback and exit code 3."""


class EdgefairError(Exception):
    """Base class: bad input or a failure edgefair can explain in one line."""


class RecipeError(EdgefairError):
    """The recipe is malformed: unknown key, bad value, missing file it names."""


class DataError(EdgefairError):
    """Evaluation or calibration data is missing, malformed or does not fit the model."""


class ModelSourceError(EdgefairError):
    """The model source cannot be loaded."""


class ExportError(EdgefairError):
    """Export to ONNX failed or the exported model disagrees with torch."""


class StepError(EdgefairError):
    """A compression step cannot be applied to its input model."""


class ModelLoadError(EdgefairError, ValueError):
    """onnxruntime cannot load a model file (also a ValueError for the torch-free probe)."""


class GeneratedModelError(RuntimeError):
    """A model edgefair generated (a compressed step) fails to load or run on the data the baseline
    ran on: a bug in edgefair or its libraries, never bad input. Deliberately not an EdgefairError,
    so the CLI prints the traceback and exits 3 instead of blaming the user's data."""
