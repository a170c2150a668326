"""Events between the app and its screens, as Textual messages.

The app posts what its services did (a model loading, loaded or failed; the characters read; a card imported)
to the screens that show it; a screen asks the app for something by posting to it (:class:`LoadModel`).
"""

from __future__ import annotations

from textual.message import Message

from haruhi_tui.core.engine import Engine


class ModelLoading(Message):
    """The chat's model is loading: what is happening, and how far (None: unknown)."""

    bubble = False

    def __init__(self, text: str, fraction: float | None = None) -> None:
        super().__init__()
        self.text, self.fraction = text, fraction


class ModelReady(Message):
    bubble = False

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine


class ModelFailed(Message):
    """The model could not be loaded (the app has reported why); the one loaded before, if any, stays."""

    bubble = False

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class CharactersLoaded(Message):
    """The characters are read: open the chat to start with (``start``: a character asked for by name)."""

    bubble = False

    def __init__(self, start: str | None = None) -> None:
        super().__init__()
        self.start = start


class CharactersChanged(Message):
    """A character was added (a card imported): lists of characters show it."""

    bubble = False


class LoadModel(Message):
    """Posted to the app: load this model for the chat (a GGUF path, or the bundled one)."""

    def __init__(self, choice: str) -> None:
        super().__init__()
        self.choice = choice
