"""Widgets of the chat app."""

from .chat_list import ChatList
from .message import MessageView, character_color
from .prompt_input import PromptInput

__all__ = ["ChatList", "MessageView", "PromptInput", "character_color"]
