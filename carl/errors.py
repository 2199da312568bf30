"""Every error carl raises on purpose (a leaf: imports nothing from carl).

:class:`CarlError` is an error caused by user input (a recipe, a folder, a file, an argument):
the CLI prints it as one line. The subclasses say which kind of input was at fault.
"""


class CarlError(Exception):
    """An error caused by user input; the CLI prints it as one line."""


class UnknownComponentError(CarlError, KeyError):
    """A recipe or a plugin names a component no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RecipeError(CarlError):
    """A recipe key, value or component name is wrong."""


class FieldError(ValueError):
    """A config value outside its range, or one that does not fit another field (raised in a
    config's ``__post_init__``); ``key`` names the field, so that the recipe loader can report
    the whole key path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key} {message}")
        self.key = key
        self.message = message


class WeightsError(CarlError, ValueError):
    """A weights file is missing, unreadable, or does not fit the model."""


class StateFileError(CarlError):
    """A state file is missing, unreadable or not what carl wrote."""


class CheckpointError(CarlError):
    """No usable checkpoint, or one that does not fit the run resuming from it."""


class FolderInUse(CarlError):
    """Another live process holds the output folder's lock."""


class NonFiniteError(CarlError):
    """The loss, the gradients or the weights became NaN or infinite."""


class TrainingInterrupted(CarlError):
    """The run stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}; continue with --resume")
        self.step = step
        self.signum = signum
        self.exit_code = 128 + signum


class StoppedAtOnce(KeyboardInterrupt):
    """The same stop signal came twice: the run stops at once, without a checkpoint; ``exit_code``
    is 128 + the signal (130 for SIGINT, 143 for SIGTERM), as for the first one."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum


def moved_here(module: str, name: str) -> type[Exception]:
    """An error class that ``module`` defined in carl 0.1 and that now lives here: returned with a
    ``DeprecationWarning`` (for a module's ``__getattr__``), until carl 0.3."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    import warnings

    warnings.warn(f"{module}.{name} is deprecated and will be removed in carl 0.3: use carl.errors.{name}",
                  DeprecationWarning, stacklevel=3)
    return cls
