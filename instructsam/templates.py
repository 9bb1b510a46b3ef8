"""Task-specific instruction templates (as InstructSeg does): the same text reads differently per task.

A template is a (before, after) pair around the user's instruction. The model tokenises the three pieces
separately, so it knows exactly which tokens are the user's instruction (those become SAM3's prompt features)
and which are template.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstructionTemplate:
    before: str
    after: str

    def render(self, text: str) -> str:
        return f"{self.before}{text}{self.after}"


TEMPLATES: dict[str, InstructionTemplate] = {
    # a referring expression names one or more objects directly
    "referring": InstructionTemplate("Please segment the object described by: ", ". Answer with instance masks."),
    # reasoning instructions need world knowledge ("something to drink from")
    "reasoning": InstructionTemplate("Please segment what answers this request: ", ". Reason about it, then answer "
                                                                                  "with instance masks."),
    # multi-instance: zero, one or many targets
    "multi_instance": InstructionTemplate("Please segment every instance that matches: ",
                                          ". There may be none, one or many. Answer with instance masks."),
    # video: the same instruction is kept across frames and tracked
    "video": InstructionTemplate("In this video frame, please segment every instance that matches: ",
                                 ". Answer with instance masks."),
}


TASKS = tuple(TEMPLATES)  # the template tasks an instruction may name
DEFAULT_MAX_INSTRUCTION_CHARS = 2000  # a planner's sentence, with room; far above any template we train on


def get_template(task: str) -> InstructionTemplate:
    """The template for a task; a clear error lists the known tasks."""
    try:
        return TEMPLATES[task]
    except KeyError:
        raise ValueError(f"unknown template task {task!r}; known tasks: {sorted(TEMPLATES)}") from None


__all__ = ["InstructionTemplate", "TEMPLATES", "TASKS", "DEFAULT_MAX_INSTRUCTION_CHARS", "get_template"]
