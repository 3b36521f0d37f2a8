"""The torch-free half of a task type: what its served route takes and answers, and how an exported ONNX model
of the type predicts (numpy). The task type's module in ``speedy.tasks`` names its runtime class
(``Task.runtime``) and takes its route, inputs and results from it, so they are declared once."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from speedy.runtime.fields import InputField


class RuntimeTask:
    type: ClassVar[str] = ""
    route: ClassVar[str] = ""  # the server's route, e.g. "/classify"
    route_help: ClassVar[str] = ""  # what the route does, for its OpenAPI description
    inputs: ClassVar[dict[str, InputField]] = {}  # the fields of one input
    results: ClassVar[dict[str, type]] = {}  # the fields of one result
    onnx_outputs: ClassVar[tuple[str, ...]] = ("logits",)  # the model outputs, as the ONNX graph names them
    fixed_labels: ClassVar[tuple[str, ...] | None] = None  # outputs that are not a label set (QA: start, end)
    min_labels: ClassVar[int] = 1

    def __init__(self, labels: list[str], info: dict | None = None):
        self.labels = list(labels)
        self.info = dict(info or {})

    @staticmethod
    def input_item(fields: dict):
        """What ``predict`` takes for one input, from its ``inputs`` fields (a request's, or the options of
        ``speedy predict``)."""
        raise NotImplementedError

    @staticmethod
    def check_result(result: dict) -> dict:
        """A result as ``speedy predict`` prints it; one that answers nothing is an error there."""
        return result

    def predict(self, runner, tokenizer, items: list, max_length: int) -> list:
        """One result per item, in order; an ``InputError`` in place of an input the model cannot take.
        ``runner``: a :class:`~speedy.runtime.session.OnnxRunner`; ``tokenizer``: a
        :class:`~speedy.runtime.tokenizer.FastTokenizer`."""
        raise NotImplementedError


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)
