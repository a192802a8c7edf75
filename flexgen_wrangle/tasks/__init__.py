"""Tasks: what to ask per row (prompt parts), how to run it on the engine, how to read the answer."""

from flexgen_wrangle.tasks.base import Task
from flexgen_wrangle.tasks.classify import Classify
from flexgen_wrangle.tasks.extract import Extract
from flexgen_wrangle.tasks.generate import Generate

__all__ = ["Classify", "Extract", "Generate", "Task"]
