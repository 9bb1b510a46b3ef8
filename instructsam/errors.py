"""Exceptions the runtime library raises for bad inputs and bad checkpoints.

Callers (the ROS node, CLIs) catch these to report the problem instead of crashing:
input problems are ValueErrors, checkpoint problems are CheckpointErrors.
"""
from __future__ import annotations


class InstructSAMInputError(ValueError):
    """Base class for problems with what the caller passed in."""


class InstructionError(InstructSAMInputError):
    """An instruction is empty, not a string, or too long."""


class ImageInputError(InstructSAMInputError):
    """An image has the wrong type, shape, dtype or size."""


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete, of the wrong kind, or its files are corrupt."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory or one of its required files does not exist."""
